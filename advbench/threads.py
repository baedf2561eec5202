"""How many threads a run's torch, BLAS and OpenMP pools use (``advbench run --threads``,
``$ADVBENCH_THREADS``).

One thread per process unless told otherwise, for two measured reasons:

- **Speed on a shared machine.** libgomp's threads spin at every barrier; when another job holds
  a core, a spinning thread burns the time slice its descheduled team mate needs. The embedded
  default (``benchmarks.toml``) took 83-194 s with torch's default 2 threads on a 2-core machine
  at load average ~2.5, and 20 s with one thread (FGSM 15.4 s against 0.4 s, PGD 35.6 s against
  2.5 s, an MLP detector fit 4.4 s against 0.2 s). On a quiet machine a second thread saves
  little on small models (see the README's timings).
- **The same numbers everywhere.** Float sums change with the thread count: one and two threads
  gave 8 different DeepFool images of the embedded default, and different metrics. A fixed
  default makes a run reproducible across machines and loads, and equal to a Ray run (one
  thread per cell, ``$ADVBENCH_RAY_CPUS_PER_CELL``).

``auto`` takes the cores this process may use (``os.sched_getaffinity``) less the load average,
at least one: faster on a big quiet machine, but the thread count, and the last bits of some
results with it, then follow the load. A user's ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``)
is never overridden: with it and no ``--threads``/``$ADVBENCH_THREADS``, the libraries keep
what it says.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from advbench.errors import AdvbenchError

ENV = "ADVBENCH_THREADS"
AUTO = "auto"
DEFAULT = 1
#: Variables through which a user already told torch (and OpenMP/BLAS) how many threads to use.
USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """``threads``: torch threads per process (``None``: leave the libraries as the user's
    environment set them); ``why``: where the number came from, for the run's output."""

    threads: int | None
    why: str

    def describe(self) -> str:
        if self.threads is None:
            return f"torch threads as {self.why} says"
        return f"{self.threads} torch thread{'s' if self.threads > 1 else ''} ({self.why})"


def parse(text: str | int, where: str) -> int | str:
    """A thread setting: a whole number >= 1, or ``auto``."""
    value = str(text).strip().lower()
    if value == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise AdvbenchError(f"{where} {text!r}: expected a whole number >= 1 or 'auto'")
    return number


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def auto_threads(cores: int, load: float | None, workers: int = 1) -> int:
    """The cores nobody else is using (cores - load average, rounded), shared by ``workers``
    processes, at least one each. Unknown load: one (the safe side: see the module notes)."""
    if load is None:
        return 1
    idle = math.floor(cores - load + 0.5)
    return max(1, min(cores, idle) // max(1, workers))


def choose(requested: str | int | None = None, environ: Mapping[str, str] | None = None, workers: int = 1,
           cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """The thread count of a run: ``requested`` (``--threads``), else ``$ADVBENCH_THREADS``, else
    the user's ``OMP_NUM_THREADS`` (left as it is), else one. ``auto`` looks at ``cores`` and
    ``load`` (default: this machine's now)."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        setting, source = parse(requested, "--threads"), "--threads"
    elif environ.get(ENV, "").strip():
        setting, source = parse(environ[ENV], ENV), ENV
    else:
        user = next((name for name in USER_VARIABLES if environ.get(name, "").strip()), None)
        if user is not None:
            return ThreadChoice(None, f"{user}={environ[user].strip()}")
        return ThreadChoice(DEFAULT, "default")
    if setting != AUTO:
        return ThreadChoice(int(setting), source)
    cores = usable_cores() if cores is None else cores
    load = load_average() if load is None else load
    shown = "unknown" if load is None else f"{load:.1f}"
    per = f", {workers} workers" if workers > 1 else ""
    return ThreadChoice(auto_threads(cores, load, workers), f"{source}=auto: {cores} cores, load {shown}{per}")


def apply(threads: int | None) -> None:
    """Set torch's and the BLAS/OpenMP pools' threads in this process (for good: a forked worker)."""
    if threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def apply_interop(threads: int | None) -> None:
    """torch's inter-op pool: settable once, before any inter-op work (a process's start)."""
    if threads is None:
        return
    import torch

    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or already used: the intra-op count is what matters here
        pass


@contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """``threads`` while the block runs (a run inside a longer process: tests, notebooks),
    then the counts as they were."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)
