"""The prediction engine: top-k labels and full softmax vectors of images under one operation.

One operation gives one output size, so a batch stays rectangular. Images are read in chunks
from a memory-mapped array (memory stays bounded: the chunk being predicted plus ``_LOOKAHEAD``
chunks being prepared); the operation on the next chunk runs in helper threads while the model
runs on the current one (Pillow releases the GIL in its codecs and filters, torch in its kernels).

Performance notes (``bench/feature_extraction.py`` measures them; see ``bench/README.md``):

* Rows become Pillow images through ``Image.frombytes`` rather than ``Image.fromarray``; each
  result goes straight into its row of the float batch, in the thread that transformed it (no
  uint8 batch, no ``np.stack``). uint8 -> float is NumPy's float32 ``x / 255``: IEEE division,
  so the very values of torch's ``.float().div_(255)`` (checked at import against a table torch
  computed; the table is the fallback), ~10x faster than a table lookup. A chunk is split into
  one contiguous slice per Pillow thread, not one task per image, and only for images of
  ``_PARALLEL_PILLOW_PIXELS`` and up: below, the GIL serialises the threads anyway.
* The first chunk is prepared in the calling thread: nothing could overlap with it (a call with
  N <= batch_size images has only that one, and then its Pillow work adds to the forward pass).
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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from advbench.errors import PluginError
from advbench.imaging import pil_to_array, to_tensor
from advbench.specs import LoadedModel

PillowOp = Callable[[Any], Any]  # PIL -> PIL
TensorOp = Callable[[torch.Tensor], torch.Tensor]  # float NCHW -> float NCHW

_LOOKAHEAD = 1  # chunks prepared ahead of the one being predicted (Pillow ops are much cheaper than the model)
# Smallest image (height x width) whose Pillow operations are spread over threads. At 32x32 an
# operation is ~0.02-0.1 ms, mostly Python holding the GIL: a second thread made the engine's
# preparation ~1.5-3x slower (GIL hand-offs, plus libgomp's spinning thread); at 64x64 and up
# Pillow's C code (which releases the GIL) dominates and two threads are ~1.3-1.9x faster.
_PARALLEL_PILLOW_PIXELS = 64 * 64

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


def _exact_divide() -> bool:
    """Does NumPy's float32 ``x / 255`` give the table's (torch's) value for every uint8 x?
    IEEE division is correctly rounded, so it should; checked once rather than assumed."""
    return bool(np.array_equal(np.divide(np.arange(256, dtype=np.uint8), np.float32(255)), _UINT8_TO_FLOAT))


_DIVIDE_IS_EXACT = _exact_divide()


def _to_float(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...]`` = float32 ``src / 255`` of uint8 ``src``: ``to_tensor``'s values, without a
    torch op (see "OpenMP regime"). A SIMD division is ~10x faster than the table lookup."""
    if _DIVIDE_IS_EXACT:
        np.divide(src, np.float32(255), out=dst)
    else:
        np.take(_UINT8_TO_FLOAT, src, out=dst)


def _split(a: int, b: int, pieces: int) -> list[tuple[int, int]]:
    """``range(a, b)`` in ``pieces`` contiguous, nearly equal (start, stop) slices, none empty."""
    pieces = max(1, min(pieces, b - a))
    return [(a + (b - a) * i // pieces, a + (b - a) * (i + 1) // pieces) for i in range(pieces)]


class _Preparer:
    """Turns the chunk at ``start`` into the model's input batch.

    On the CPU each image goes from Pillow straight into its row of the float batch (one pass,
    no intermediate uint8 batch), in the thread that ran its operation; elsewhere the uint8
    batch goes through ``to_tensor`` on the device.
    """

    def __init__(self, images: Any, batch_size: int, op: PillowOp | None, tensor_op: TensorOp | None,
                 device: str, threads: int):
        self.images, self.batch_size, self.device = images, batch_size, device
        self.op = op if tensor_op is None else None
        self.tensor_op = tensor_op
        height, width = images.shape[1:3]
        self.size = (width, height)
        # Pillow threads only pay where Pillow's C code (which releases the GIL) dominates.
        self.helpers = max(0, threads - 1) if self.op is not None and height * width >= _PARALLEL_PILLOW_PIXELS \
            else 0
        self.pool = ThreadPoolExecutor(max_workers=self.helpers) if self.helpers else None

    def __call__(self, start: int) -> torch.Tensor:
        part = self.images[start:start + self.batch_size]
        if self.tensor_op is not None:
            return self.tensor_op(to_tensor(np.asarray(part), self.device)).clamp_(0, 1)
        rows = np.ascontiguousarray(part, dtype=np.uint8)  # a memory-mapped uint8 array: a view, no copy
        if self.device != "cpu":
            return to_tensor(rows if self.op is None else self._pillow(rows, np.uint8), self.device)
        if self.op is None:
            batch = np.empty(rows.shape, dtype=np.float32)
            _to_float(rows, batch)
        else:
            batch = self._pillow(rows, np.float32)
        return torch.from_numpy(batch).permute(0, 3, 1, 2)  # to_tensor's layout: channels-last strides

    def _pillow(self, rows: np.ndarray, dtype: type) -> np.ndarray:
        """``op`` on every row: one contiguous slice per thread, the last one in this thread.
        The first image, done first, gives the output size."""
        first = self._transform(rows[0])
        batch = np.empty((len(rows), *first.shape), dtype=dtype)
        self._store(first, batch, 0)
        slices = _split(1, len(rows), 1 + self.helpers)
        futures = [self.pool.submit(self._fill, rows, batch, a, b) for a, b in slices[:-1]] if self.pool else []
        self._fill(rows, batch, *slices[-1])
        for f in futures:
            f.result()
        return batch

    def _transform(self, row: np.ndarray) -> np.ndarray:
        return pil_to_array(self.op(Image.frombytes("RGB", self.size, row)))

    def _fill(self, rows: np.ndarray, batch: np.ndarray, a: int, b: int) -> None:
        for i in range(a, b):
            self._store(self._transform(rows[i]), batch, i)

    @staticmethod
    def _store(image: np.ndarray, batch: np.ndarray, i: int) -> None:
        if image.shape != batch.shape[1:]:
            raise ValueError(f"the operation gave images of different sizes in one batch: "
                             f"{image.shape[1]}x{image.shape[0]} and {batch.shape[2]}x{batch.shape[1]}")
        if batch.dtype == np.uint8:
            batch[i] = image
        else:
            _to_float(image, batch[i])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _chunks(prepare: _Preparer, n: int, *, join_openmp: bool, torch_in_helper: bool) -> Iterator[torch.Tensor]:
    """The prepared chunks in order; a helper thread prepares the next one meanwhile.

    The first chunk is prepared in this thread (there is nothing to overlap it with yet).
    ``join_openmp``: the helper joins OpenMP before the first forward pass (throttled regime).
    Without ``torch_in_helper`` (plain regime) a tensor operation runs in this thread instead,
    after the forward pass of the previous chunk rather than during it.
    """
    starts = range(0, n, prepare.batch_size)
    if (prepare.tensor_op is not None and not torch_in_helper) or (len(starts) == 1 and not join_openmp):
        for start in starts:
            yield prepare(start)
        return
    ahead = ThreadPoolExecutor(max_workers=1)
    pending: deque[Future[torch.Tensor]] = deque()
    try:
        joined = ahead.submit(_join_openmp) if join_openmp else None
        current = prepare(starts[0])
        if joined is not None:
            joined.result()  # the process is throttled from the first forward pass on
        for start in starts[1:]:
            pending.append(ahead.submit(prepare, start))  # prepared while the model runs on `current`
            if len(pending) >= _LOOKAHEAD:
                yield current
                del current
                current = pending.popleft().result()
        while True:
            yield current
            del current
            if not pending:
                break
            current = pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        ahead.shutdown(wait=True)


# --- the engine -------------------------------------------------------------------------------


@torch.no_grad()
def predict_under_operation(model: LoadedModel, images: np.ndarray, *, top_k: int, batch_size: int,
                            device: str, op: PillowOp | None = None, tensor_op: TensorOp | None = None,
                            reference: np.ndarray | None = None, threads: int = 2) -> dict[str, np.ndarray]:
    """Predict every image under one operation (``op`` on PIL images, or ``tensor_op`` on float
    batches; neither: the images as they are), ``batch_size`` images per forward pass.

    Returns, for N images, C classes and k = min(top_k, C):

    * ``labels`` int32 (N, k): the top-k classes under the operation, most probable first;
    * ``probs`` float32 (N, k): the softmax probabilities, under the operation, of ``labels``;
      with a ``reference`` (N, r) (the untransformed top-r), float32 (N, r) of those labels;
    * ``full`` float16 (N, C): the whole softmax output (2 bytes per class and image; values
      below ~6e-8 become 0, relative precision ~5e-4). ``labels`` and ``probs`` come from the
      float32 softmax, so ``full``'s argmax may differ where float16 makes two classes tie.

    ``threads``: threads for the Pillow operations (the torch thread count is the caller's).
    """
    k = min(top_k, model.num_classes)
    classes = model.num_classes
    labels = np.zeros((len(images), k), dtype=np.int32)
    probs = np.zeros((len(images), k if reference is None else np.shape(reference)[1]), dtype=np.float32)
    full = np.zeros((len(images), classes), dtype=np.float16)
    if not len(images):
        return {"labels": labels, "probs": probs, "full": full}
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
            forward_s += time.perf_counter() - t0
            d1 = _run_delay() if d0 is not None else None
            delay_s = None if d0 is None or d1 is None or delay_s is None else delay_s + max(0.0, d1 - d0)
            if p.shape[1] != classes:
                raise PluginError(f"the model returned {p.shape[1]} scores per image but declares "
                                  f"num_classes={classes}")
            top = p.topk(k, dim=1)
            n = len(batch)
            labels[position:position + n] = top.indices.cpu().numpy()
            if reference is None:
                probs[position:position + n] = top.values.cpu().numpy()
            else:
                ref = torch.from_numpy(np.asarray(reference[position:position + n], dtype=np.int64)).to(p.device)
                probs[position:position + n] = p.gather(1, ref).cpu().numpy()
            full[position:position + n] = p.to(torch.float16).cpu().numpy()  # rounded to nearest, like NumPy
            position += n
    finally:
        chunks.close()
        prepare.close()
    if choose:
        _CONTENTION.record(delay_s, forward_s)
    return {"labels": labels, "probs": probs, "full": full}


def topk_misclassified(labels: np.ndarray, reference_labels: np.ndarray) -> int:
    """How many images no longer have their reference label among the top-k (paper Table 3)."""
    if len(labels) == 0:
        return 0
    return int((~(labels == reference_labels.reshape(-1, 1)).any(axis=1)).sum())
