"""The prediction engine: top-k labels of every image under one operation, batched.

One operation gives one output size, so a batch stays rectangular. Images are read in chunks
from a memory-mapped array (memory stays bounded: the chunk being predicted plus ``_LOOKAHEAD``
chunks being prepared); the operation on the next chunk runs in helper threads while the model
runs on the current one (Pillow releases the GIL in its codecs and filters, torch in its kernels).

Performance notes (``bench/feature_extraction.py`` measures them; see ``bench/README.md``):

* Rows become Pillow images through ``Image.frombytes`` rather than ``Image.fromarray``, and
  uint8 -> float goes through a 256-entry table that torch
  itself computed: the same values with less per-image overhead and no extra copies. A chunk is
  split into one contiguous slice per Pillow thread, not one task per image.
* OpenMP regime. libgomp spin-waits at its barriers (~300k iterations) unless the process has
  more OpenMP threads than CPUs, when it "throttles" the spinning (~1k) and sleeps sooner. On a
  quiet machine spinning is fastest (a small model does many short parallel regions); on a busy
  one a spinning thread burns the time slices its descheduled team mate needs, and a 2-thread
  forward pass of ResNet-20 measured 2-8x slower than throttled. The process is throttled while
  some other thread owns an OpenMP team, so the engine can choose per call: its helper thread
  runs one small parallel torch op ("throttled") or no torch op at all ("plain"). It throttles
  when the previous call's forward passes found the machine oversubscribed (the run delay of
  this process's threads, from Linux schedstat; :class:`_Contention`), and where it cannot tell.
  The regime changes only how threads wait, never the arithmetic: results are the same in both.
* Deliberately unchanged, to keep results bit-identical: the batch composition (``batch_size``
  chunks; oneDNN results depend on the batch size), the input layout (the channels-last strides
  ``to_tensor`` produces; a contiguous or ``channels_last`` model changes the last bits), the
  torch thread count (global state of the caller). ``torch.inference_mode`` is not used: a model
  that caches a tensor during its first forward pass would then hold an inference tensor that
  later breaks gradient attacks; ``no_grad`` costs the same here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from advbench.imaging import pil_to_array, to_tensor
from advbench.specs import LoadedModel

PillowOp = Callable[[Any], Any]  # PIL -> PIL
TensorOp = Callable[[torch.Tensor], torch.Tensor]  # float NCHW -> float NCHW

_LOOKAHEAD = 1  # chunks prepared ahead of the one being predicted (Pillow ops are much cheaper than the model)

# uint8 -> float exactly as to_tensor's ``.float().div_(255)`` computes it on the CPU.
_UINT8_TO_FLOAT = torch.arange(256, dtype=torch.uint8).float().div_(255).numpy()


# --- OpenMP regime ----------------------------------------------------------------------------


def _run_delay() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed over
    its threads (Linux schedstat); None where the kernel does not say."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread has just exited
    return total / 1e9


class _Contention:
    """Is the machine oversubscribed? Measured as the run delay of this process's threads
    during the last forward passes: a quarter of a thread or more waiting for a CPU on average.
    Unknown (no schedstat, or no measurement yet) counts as oversubscribed."""

    THRESHOLD = 0.25  # threads waiting, on average

    def __init__(self) -> None:
        self.busy: bool | None = None

    def throttle(self) -> bool:
        return self.busy is not False

    def record(self, run_delay_s: float | None, wall_s: float) -> None:
        if run_delay_s is not None and wall_s > 0:
            self.busy = run_delay_s / wall_s >= self.THRESHOLD


_CONTENTION = _Contention()


def _join_openmp() -> None:
    """Give the calling (helper) thread an OpenMP team: the process's spin-waiting is throttled
    while the thread lives."""
    torch.ones(1 << 16).mul_(2)  # above ATen's grain size (32768): a real parallel region


# --- preparing chunks -------------------------------------------------------------------------


def _uint8_to_float(rows: np.ndarray, device: str) -> torch.Tensor:
    """``to_tensor`` of uint8 (N, H, W, 3) rows: float (N, 3, H, W), the same values and strides.

    On the CPU via the table, without a torch op (see "OpenMP regime"), which this thread may not
    run; elsewhere exactly as ``to_tensor`` (a CUDA division by a scalar multiplies by its inverse).
    """
    if device == "cpu":
        return torch.from_numpy(_UINT8_TO_FLOAT[rows]).permute(0, 3, 1, 2)
    return to_tensor(rows, device)


def _apply_op(op: PillowOp, rows: np.ndarray) -> list[np.ndarray]:
    """``op`` on each (H, W, 3) uint8 row of a C-contiguous (N, H, W, 3) array."""
    size = (rows.shape[2], rows.shape[1])
    return [pil_to_array(op(Image.frombytes("RGB", size, a))) for a in rows]


def _pillow_chunk(rows: np.ndarray, op: PillowOp, pool: ThreadPoolExecutor | None, threads: int) -> np.ndarray:
    """The rows under ``op``, uint8: one contiguous slice per thread, the last one in this thread."""
    n = len(rows)
    pieces = max(1, min(threads, n)) if pool is not None else 1
    bounds = [n * i // pieces for i in range(pieces + 1)]
    futures = [pool.submit(_apply_op, op, rows[a:b]) for a, b in zip(bounds[:-2], bounds[1:-1])] if pool else []
    last = _apply_op(op, rows[bounds[-2]:])
    return np.stack([a for f in futures for a in f.result()] + last)


class _Preparer:
    """Turns the chunk at ``start`` into the model's input batch."""

    def __init__(self, images: Any, batch_size: int, op: PillowOp | None, tensor_op: TensorOp | None,
                 device: str, threads: int):
        self.images, self.batch_size, self.device, self.threads = images, batch_size, device, threads
        self.op = op if tensor_op is None else None
        self.tensor_op = tensor_op
        self.pool = ThreadPoolExecutor(max_workers=threads - 1) if self.op is not None and threads > 1 else None

    def __call__(self, start: int) -> torch.Tensor:
        part = self.images[start:start + self.batch_size]
        if self.tensor_op is not None:
            return self.tensor_op(to_tensor(np.asarray(part), self.device)).clamp_(0, 1)
        rows = np.ascontiguousarray(part, dtype=np.uint8)  # reads (and copies) the memory-mapped rows
        if self.op is not None:
            rows = _pillow_chunk(rows, self.op, self.pool, self.threads)
        return _uint8_to_float(rows, self.device)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _chunks(prepare: _Preparer, n: int, *, join_openmp: bool, torch_in_helper: bool) -> Iterator[torch.Tensor]:
    """The prepared chunks in order; the next one is prepared by a helper thread meanwhile.

    ``join_openmp``: the helper first joins OpenMP (throttled regime). Without
    ``torch_in_helper`` (plain regime) a tensor operation runs in this thread instead, after the
    forward pass of the previous chunk rather than during it.
    """
    starts = range(0, n, prepare.batch_size)
    if prepare.tensor_op is not None and not torch_in_helper:
        for start in starts:
            yield prepare(start)
        return
    upcoming = iter(starts)
    ahead = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[torch.Tensor]] = []
    try:
        if join_openmp:
            ahead.submit(_join_openmp)
        pending.append(ahead.submit(prepare, next(upcoming)))
        while pending:
            current = pending.pop(0).result()
            for start in upcoming:  # prepare the next chunk(s) while the model runs on this one
                pending.append(ahead.submit(prepare, start))
                if len(pending) >= _LOOKAHEAD:
                    break
            yield current
            del current
    finally:
        for f in pending:
            f.cancel()
        ahead.shutdown(wait=True)


# --- the engine -------------------------------------------------------------------------------


@torch.no_grad()
def predict_under_operation(model: LoadedModel, images: np.ndarray, *, top_k: int, batch_size: int,
                            device: str, op: PillowOp | None = None, tensor_op: TensorOp | None = None,
                            reference: np.ndarray | None = None, threads: int = 2) -> dict[str, np.ndarray]:
    """Return ``labels`` (N, k): top-k under the op, and ``probs`` (N, k): the softmax
    probabilities, under the op, of the ``reference`` labels (the untransformed top-k; the
    image's own top-k when no reference is given)."""
    k = min(top_k, model.num_classes)
    labels = np.zeros((len(images), k), dtype=np.int32)
    probs = np.zeros((len(images), k), dtype=np.float32)
    if not len(images):
        return {"labels": labels, "probs": probs}
    # The OpenMP regime matters only for CPU forward passes on more than one thread.
    choose = device == "cpu" and torch.get_num_threads() > 1
    throttled = choose and _CONTENTION.throttle()
    prepare = _Preparer(images, batch_size, op, tensor_op, device, max(1, threads))
    chunks = _chunks(prepare, len(images), join_openmp=throttled, torch_in_helper=throttled or not choose)
    position, forward_s = 0, 0.0
    delay_s: float | None = 0.0  # run delay during the forward passes (see _Contention)
    try:
        for batch in chunks:
            d0 = _run_delay() if choose else None
            t0 = time.perf_counter()
            p = torch.softmax(model.module(batch).float(), dim=1)
            top = p.topk(k, dim=1)
            n = len(batch)
            labels[position:position + n] = top.indices.cpu().numpy()
            forward_s += time.perf_counter() - t0
            d1 = _run_delay() if d0 is not None else None
            delay_s = None if d0 is None or d1 is None or delay_s is None else delay_s + max(0.0, d1 - d0)
            if reference is None:
                probs[position:position + n] = top.values.cpu().numpy()
            else:
                ref = torch.from_numpy(np.asarray(reference[position:position + n], dtype=np.int64)).to(p.device)
                probs[position:position + n] = p.gather(1, ref).cpu().numpy()
            position += n
    finally:
        chunks.close()
        prepare.close()
    if choose:
        _CONTENTION.record(delay_s, forward_s)
    return {"labels": labels, "probs": probs}


def topk_misclassified(labels: np.ndarray, reference_labels: np.ndarray) -> int:
    """How many images no longer have their reference label among the top-k (paper Table 3)."""
    if len(labels) == 0:
        return 0
    return int((~(labels == reference_labels.reshape(-1, 1)).any(axis=1)).sum())
