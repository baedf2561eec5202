"""Code that the store tests run in child processes (spawned: importable by module name)."""

from __future__ import annotations

import traceback

from advbench.schema import Cell


def StubCell(stage: str, key: str, **fields) -> Cell:  # noqa: N802 - reads as the cell it makes
    """A cell of dataset "d" and model "m" (record_cell reads every schema field of it)."""
    return Cell(stage, key, **({"dataset": "d", "model": "m"} | fields))


N_CELLS = 50
N_IMAGES = 300


def cell_metrics(i: int) -> list[tuple[str, str, float]]:
    return [("accuracy", "", i / 100), ("eer", "", 1 - i / 100), ("detection_rate", f"attack{i % 3}", 0.5)]


def image_columns(n: int = N_IMAGES) -> dict[str, list]:
    return {"source": [f"img{i}" for i in range(n)], "origin": ["clean" if i % 2 else "fgsm" for i in range(n)],
            "split": ["eval"] * n, "y": [i % 2 == 0 for i in range(n)], "truth": [i % 10 for i in range(n)],
            "score": [i / n for i in range(n)]}


def open_only(url: str, barrier, results) -> None:
    """Open (and so migrate) a store, all children at once."""
    try:
        from advbench.store import Store

        barrier.wait(timeout=120)
        Store(url).close()
        results.put(None)
    except BaseException:  # noqa: BLE001 - the parent asserts on it
        results.put(traceback.format_exc())


def identical_run(url: str, barriers, native: bool, results) -> None:
    """What one of several identical ``advbench run`` processes does to the store.

    ``native=False``: the select-then-insert fallback of dialects without ON CONFLICT.
    """
    try:
        from advbench.store import Store

        barriers[0].wait(timeout=120)
        store = Store(url)  # a fresh store: the migration race
        store._native_upsert = native
        barriers[1].wait(timeout=120)
        run = store.start_run(benchmark="b", config_hash="h", config_text="[benchmark]", seed=0, versions={})
        for i in range(N_CELLS):
            cell = StubCell("detect", f"key{i:03d}", detector="svm", budget=0.03, threat="linf")
            store.record_cell(run, cell, status="ok", metrics=cell_metrics(i))
            if i % 10 == 0:
                store.heartbeat()
        store.record_images("shared-images", image_columns())
        store.finish_run(run, "ok", keep={f"key{i:03d}" for i in range(N_CELLS)})
        store.close()
        results.put(("ok", run))
    except BaseException:  # noqa: BLE001
        results.put(("error", traceback.format_exc()))
