"""Content-addressed artefacts: one directory per cell key, written atomically.

A cell writes into a private temporary directory that is renamed into place only when it is
complete, so a crash never leaves a half-written artefact that a later run would trust. A file
lock per key keeps two processes sharing the cache from computing the same cell twice.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from filelock import FileLock

COMPLETE = "_complete.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADVBENCH_CACHE_DIR") or platformdirs.user_cache_dir("advbench"))


class Cache:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / COMPLETE).exists()

    def metrics(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / COMPLETE).read_text())

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{stage}-{key}.lock")):
            yield

    @contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a scratch directory; on success it becomes the artefact of ``key``."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        scratch.mkdir()
        try:
            yield scratch
            if final.exists():  # stale incomplete artefact from a crashed run
                shutil.rmtree(final)
            os.replace(scratch, final)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)

    def discard(self, stage: str, key: str) -> None:
        shutil.rmtree(self.path(stage, key), ignore_errors=True)


def write_complete(directory: Path, metrics: dict[str, Any]) -> None:
    (directory / COMPLETE).write_text(json.dumps(metrics, sort_keys=True, default=float))


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.asarray(array))


def load_array(directory: Path, name: str, mmap: bool = False) -> np.ndarray:
    return np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None)
