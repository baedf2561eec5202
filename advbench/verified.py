"""Files a plugin keeps in its cache folder (trained weights, memos), checksummed so that a
damaged one is rebuilt, never used.

A cell's artefact is checksummed by the core (:mod:`advbench.cache`); what a plugin writes
into ``BuildContext.cache_dir`` is not a cell's, so the plugin asks for it through
:func:`verified_file`::

    path = verified_file(ctx.cache_dir / "weights.pt", lambda tmp: torch.save(train(), tmp))
    state = torch.load(path, weights_only=True)

The file gets a sidecar ``<name>.sum`` (its size and BLAKE2 digest). A file that is missing,
has no sidecar or does not match it is (re)made by ``make`` under a lock (two processes never
make it twice), into a temporary file that is renamed into place whole; a damaged one is named
in a warning. ``advbench cache verify`` checks every sealed file of the cache (``--fix``
deletes the damaged ones) and ``advbench cache prune`` removes temporary files whose writer died.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

SUM_SUFFIX = ".sum"
LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".tmp"
#: temporary files are named ``.<name>.pid<PID>.<random>.tmp``: prune knows a dead writer's
_TMP_NAME = re.compile(r"^\..+\.pid(\d+)\.[0-9a-f]{8}\.tmp$")


@dataclass(frozen=True)
class FileState:
    status: str  # "ok", "missing", "unsealed" (no sidecar) or "damaged"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sum_path(path: Path) -> Path:
    return path.with_name(path.name + SUM_SUFFIX)


def file_state(path: Path) -> FileState:
    """Whether ``path`` exists and matches its sidecar."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileState("missing")
    try:
        record = json.loads(sum_path(path).read_text())
        expected_size, expected = int(record["size"]), str(record["blake2b"])
    except FileNotFoundError:
        return FileState("unsealed", f"{path.name} has no checksum ({path.name}{SUM_SUFFIX})")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return FileState("damaged", f"unreadable {path.name}{SUM_SUFFIX} ({type(exc).__name__})")
    if size != expected_size:
        return FileState("damaged", f"{path.name} has {size} bytes, its checksum record says {expected_size}")
    if digest(path) != expected:
        return FileState("damaged", f"{path.name} does not match its checksum")
    return FileState("ok")


def seal(path: Path) -> None:
    """Write the sidecar of ``path`` as it is now (atomically)."""
    path = Path(path)
    record = json.dumps({"size": path.stat().st_size, "blake2b": digest(path)})
    tmp = _tmp_path(sum_path(path))
    tmp.write_text(record)
    os.replace(tmp, sum_path(path))


def verified_file(path: Path | str, make: Callable[[Path], None], *, what: str = "") -> Path:
    """``path``, holding an intact file: as found when it matches its checksum, else made by
    ``make(tmp)`` (which writes the file at ``tmp``) and sealed. A damaged file is named in a
    warning (``what`` says what it is, e.g. "digits-cnn's trained weights") and replaced."""
    path = Path(path)
    if file_state(path).ok:  # the fast path: no lock
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + LOCK_SUFFIX):
        state = file_state(path)  # another process may have made it while we waited
        if state.ok:
            return path
        if state.status == "damaged":
            warnings.warn(f"rebuilding {what or path.name}: {path} is damaged ({state.reason})", stacklevel=2)
        elif state.status == "unsealed":  # never used unchecked: an older advbench (or a crash before sealing) left it
            warnings.warn(f"rebuilding {what or path.name}: {path} has no checksum to check it against", stacklevel=2)
        tmp = _tmp_path(path)
        try:
            make(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        seal(path)
    return path


def discard(path: Path) -> None:
    """Delete a file and its sidecar (the next :func:`verified_file` makes it again)."""
    Path(path).unlink(missing_ok=True)
    sum_path(Path(path)).unlink(missing_ok=True)


def kept_files(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` that are neither sidecars, locks nor temporary files."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith((SUM_SUFFIX, LOCK_SUFFIX, TMP_SUFFIX)):
            yield path


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.pid{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def writer_pid(tmp: Path) -> int | None:
    """The pid of the process that made a temporary file of this module, else None."""
    match = _TMP_NAME.match(tmp.name)
    return int(match[1]) if match else None

