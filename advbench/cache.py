"""Content-addressed artefacts: one directory per cell key, written atomically, checksummed.

A cell writes into a private scratch directory that is renamed into place only when it is
complete, so a crash never leaves a half-written artefact that a later run would trust. The
completion record (``_complete.json``, written last) lists every file with its size and BLAKE2
digest, and an artefact is trusted only while they match: a truncated or damaged file makes the
cell "damaged", and it is recomputed. The record carries a checksum of itself too, so a metric
edited in it (an accuracy typed over) is damage as well, never served as cached. A file lock per
key keeps processes sharing the cache from computing the same cell twice: whoever takes it
checks again for a finished artefact first, and sweeps scratch folders that a killed process left
for that key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from filelock import FileLock, Timeout

from advbench import verified

COMPLETE = "_complete.json"
SCRATCH_SUFFIX = ".tmp"
#: the completion record's own checksum: BLAKE2 of the record's other keys as canonical JSON
RECORD_CHECKSUM = "record_blake2b"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADVBENCH_CACHE_DIR") or platformdirs.user_cache_dir("advbench"))


def _files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != COMPLETE:
            yield path


@dataclass(frozen=True)
class ArtefactState:
    status: str  # "complete", "missing" or "damaged"
    reason: str = ""

    @property
    def complete(self) -> bool:
        return self.status == "complete"


class Cache:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._verified: dict[Path, tuple[float, int]] = {}  # artefact -> (mtime, size) of its record

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    # --- reading ----------------------------------------------------------------------------

    def state(self, stage: str, key: str) -> ArtefactState:
        """Whether the artefact of ``key`` is complete and every file matches its record."""
        directory = self.path(stage, key)
        record_path = directory / COMPLETE
        try:
            stat = record_path.stat()
        except FileNotFoundError:
            return ArtefactState("missing")
        if self._verified.get(directory) == (stat.st_mtime, stat.st_size):
            return ArtefactState("complete")
        try:
            record = json.loads(record_path.read_text())
            files = record["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return ArtefactState("damaged", f"unreadable {COMPLETE} ({type(exc).__name__})")
        if RECORD_CHECKSUM not in record:
            return ArtefactState("damaged", f"{COMPLETE} has no checksum of its metrics (an older advbench wrote it)")
        if record[RECORD_CHECKSUM] != _record_digest(record):
            return ArtefactState("damaged", f"{COMPLETE} does not match its checksum (its metrics were edited)")
        for name, (size, digest) in files.items():
            path = directory / name
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                return ArtefactState("damaged", f"{name} is missing")
            if actual != size:
                return ArtefactState("damaged", f"{name} has {actual} bytes, its record says {size}")
            if verified.digest(path) != digest:
                return ArtefactState("damaged", f"{name} does not match its checksum")
        self._verified[directory] = (stat.st_mtime, stat.st_size)
        return ArtefactState("complete")

    def has(self, stage: str, key: str) -> bool:
        return self.state(stage, key).complete

    def metrics(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / COMPLETE).read_text())

    # --- writing ----------------------------------------------------------------------------

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / "locks" / f"{stage}-{key}.lock"

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the cell's lock; scratch folders left for this key by dead processes are swept
        once it is held (whoever made them held the lock, so they are stale)."""
        path = self._lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path)):
            self.sweep_scratch(stage, key)
            yield
            # a waiter that opened the old file re-checks the state and skips; the record was
            # just written (and hashed) by whoever held the lock, so its presence is enough here
            if (self.path(stage, key) / COMPLETE).exists():
                path.unlink(missing_ok=True)

    @contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a scratch directory; on success it becomes the artefact of ``key``."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = final.parent / f".{key}.{uuid.uuid4().hex[:8]}{SCRATCH_SUFFIX}"
        scratch.mkdir()
        try:
            yield scratch
            if not (scratch / COMPLETE).exists():
                write_complete(scratch, {})
            if final.exists():  # a damaged or stale artefact
                shutil.rmtree(final)
            os.replace(scratch, final)
            self._verified.pop(final, None)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)

    def discard(self, stage: str, key: str) -> None:
        self._verified.pop(self.path(stage, key), None)
        shutil.rmtree(self.path(stage, key), ignore_errors=True)

    def sweep_scratch(self, stage: str, key: str) -> int:
        parent = self.path(stage, key).parent
        stale = list(parent.glob(f".{key}.*{SCRATCH_SUFFIX}")) if parent.exists() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    # --- maintenance (advbench cache verify | prune) ---------------------------------------

    def artefacts(self) -> Iterator[tuple[str, str]]:
        """(stage, key) of every artefact directory in the cache."""
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []:
            if stage_dir.name in ("locks", "logs", "plugins"):
                continue
            for shard in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                for directory in sorted(p for p in shard.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    yield stage_dir.name, directory.name

    def prune(self) -> dict[str, int]:
        """Remove what no live process uses: scratch folders and lock files whose lock is free,
        and temporary files whose writer is gone (a plugin's, see :mod:`advbench.verified`)."""
        removed = {"scratch": 0, "locks": 0, "tmp": 0}
        scratch_folders = set(self.root.glob(f"*/*/.*{SCRATCH_SUFFIX}"))
        for scratch in scratch_folders:
            stage, key = scratch.parent.parent.name, scratch.name[1:].split(".")[0]
            if self._try_lock(stage, key, lambda: shutil.rmtree(scratch, ignore_errors=True)):
                removed["scratch"] += 1
        for lock in (self.root / "locks").glob("*.lock") if (self.root / "locks").exists() else []:
            stage, _, key = lock.stem.partition("-")
            if self._try_lock(stage, key, lambda: lock.unlink(missing_ok=True)):
                removed["locks"] += 1
        for tmp in sorted(self.root.rglob(f"*{SCRATCH_SUFFIX}")) if self.root.exists() else []:
            if tmp not in scratch_folders and tmp.exists() and _stale_tmp(tmp):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
                removed["tmp"] += 1
        return removed

    # --- files plugins keep under plugins/ (advbench.verified) -------------------------------

    def plugin_files(self) -> Iterator[tuple[Path, verified.FileState]]:
        """Every file a plugin keeps in the cache, with its state against its checksum."""
        for path in verified.kept_files(self.root / "plugins"):
            yield path, verified.file_state(path)

    def _try_lock(self, stage: str, key: str, action) -> bool:
        try:
            with FileLock(str(self._lock_path(stage, key)), timeout=0):
                action()
                return True
        except Timeout:
            return False


#: a temporary file whose writer is unknown is taken for abandoned once untouched this long
STALE_TMP_SECONDS = 3600.0


def _stale_tmp(path: Path) -> bool:
    """Whether a temporary file (or folder) outside the cell scratch layout is abandoned: its
    writer's pid (named in it by advbench.verified) is dead, or, writer unknown, it has not
    been touched for STALE_TMP_SECONDS."""
    from advbench.store.db import pid_alive

    pid = verified.writer_pid(path)
    if pid is not None:
        return not pid_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > STALE_TMP_SECONDS
    except FileNotFoundError:
        return False


def write_complete(directory: Path, record: dict[str, Any]) -> None:
    """Write the completion record last: the metrics, every file's size and digest, and the
    record's own checksum."""
    files = {str(p.relative_to(directory)): [p.stat().st_size, verified.digest(p)] for p in _files(directory)}
    # the digest is taken over the record as it will be read back (numpy numbers as floats, tuples as lists)
    body = json.loads(json.dumps({**record, "files": files}, default=float))
    body[RECORD_CHECKSUM] = _record_digest(body)
    (directory / COMPLETE).write_text(json.dumps(body, sort_keys=True))


def _record_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != RECORD_CHECKSUM}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def save_arrays(directory: Path, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.asarray(array))


def load_array(directory: Path, name: str, mmap: bool = False) -> np.ndarray:
    return np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None)


def save_columns(directory: Path, name: str, **columns: np.ndarray) -> None:
    """Per-image columns of equal length (no pickled objects: strings are stored as unicode)."""
    np.savez(directory / f"{name}.npz", **{k: _plain(v) for k, v in columns.items()})


def load_columns(directory: Path, name: str) -> dict[str, np.ndarray] | None:
    path = directory / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _plain(values: Any) -> np.ndarray:
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array
