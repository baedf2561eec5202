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
  :func:`predict_under_operations` takes several operations in one call, so that the first
  chunk of each but the first overlaps the last forward pass of the operation before.
* OpenMP regime. libgomp spin-waits at its barriers (~300k iterations) unless the process has
  more OpenMP threads than CPUs, when it "throttles" the spinning (~1k) and sleeps sooner. On a
  quiet machine spinning is fastest (a small model does many short parallel regions); on a busy
  one a spinning thread burns the time slices its descheduled team mate needs, and a 2-thread
  forward pass of ResNet-20 measured 2-80x slower than throttled. The process is throttled while
  some other thread owns an OpenMP team, so the engine can choose per call: its helper thread
  runs one small parallel torch op ("throttled") or no torch op at all ("plain"). It throttles
  as soon as one call's forward passes found the machine oversubscribed (the run delay of this
  process's threads, from Linux schedstat; :class:`_Contention`), spins again only after 0.2 s
  of forward passes found it quiet, and throttles where it cannot tell.
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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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
Operation = tuple[PillowOp | None, TensorOp | None]  # (op, tensor_op); a tensor_op wins

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
    during forward passes: a quarter of a thread or more waiting for a CPU on average.
    Unknown (no schedstat, or no measurement yet) counts as oversubscribed.

    The two mistakes cost very differently: plain spinning on a busy machine made forward passes
    10-80x slower (measured at load 5-7 on 2 cores), throttling on a quiet one ~1.15x. So one
    call that finds the machine busy throttles at once, while going back to plain takes calls
    with ``WINDOW_S`` of forward passes in all that found it quiet together: a single short call
    (a few ms of forward pass for a handful of images) is too noisy to bet a 10x slowdown on.
    """

    THRESHOLD = 0.25  # threads waiting, on average
    WINDOW_S = 0.2  # seconds of quiet forward passes before plain spinning comes back

    def __init__(self) -> None:
        self.busy: bool | None = None
        self._delay_s = self._wall_s = 0.0  # quiet evidence gathered since the last decision

    def throttle(self) -> bool:
        return self.busy is not False

    def record(self, run_delay_s: float | None, wall_s: float) -> None:
        if run_delay_s is None or wall_s <= 0:
            return
        if run_delay_s / wall_s >= self.THRESHOLD:
            self.busy, self._delay_s, self._wall_s = True, 0.0, 0.0
            return
        self._delay_s += run_delay_s
        self._wall_s += wall_s
        if self._wall_s >= self.WINDOW_S:
            self.busy = self._delay_s / self._wall_s >= self.THRESHOLD
            self._delay_s = self._wall_s = 0.0


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


class _Batch:
    """The rows of a batch, allocated by whichever thread has the first transformed image (its
    size is the operation's output size): no thread waits for another before it starts."""

    def __init__(self, n: int, dtype: type):
        self.n, self.dtype = n, dtype
        self.array: np.ndarray | None = None
        self._lock = threading.Lock()

    def store(self, i: int, image: np.ndarray) -> None:
        if self.array is None:
            with self._lock:
                if self.array is None:
                    self.array = np.empty((self.n, *image.shape), dtype=self.dtype)
        if image.shape != self.array.shape[1:]:
            raise ValueError(f"the operation gave images of different sizes in one batch: "
                             f"{image.shape[1]}x{image.shape[0]} and {self.array.shape[2]}x{self.array.shape[1]}")
        if self.dtype == np.uint8:
            self.array[i] = image
        else:
            _to_float(image, self.array[i])


class _Preparer:
    """Turns chunks of ``images`` into the model's input batches, under any operation.

    On the CPU each image goes from Pillow straight into its row of the float batch (one pass,
    no intermediate uint8 batch), in the thread that ran its operation; elsewhere the uint8
    batch goes through ``to_tensor`` on the device.
    """

    def __init__(self, images: Any, batch_size: int, device: str, threads: int, pillow: bool):
        self.images, self.batch_size, self.device = images, batch_size, device
        height, width = images.shape[1:3]
        self.size = (width, height)
        # Pillow threads only pay where Pillow's C code (which releases the GIL) dominates.
        self.helpers = max(0, threads - 1) if pillow and height * width >= _PARALLEL_PILLOW_PIXELS else 0
        self.pool = ThreadPoolExecutor(max_workers=self.helpers) if self.helpers else None

    def __call__(self, operation: Operation, start: int) -> torch.Tensor:
        op, tensor_op = operation
        part = self.images[start:start + self.batch_size]
        if tensor_op is not None:
            return tensor_op(to_tensor(np.asarray(part), self.device)).clamp_(0, 1)
        rows = np.ascontiguousarray(part, dtype=np.uint8)  # a memory-mapped uint8 array: a view, no copy
        if self.device != "cpu":
            return to_tensor(rows if op is None else self._pillow(op, rows, np.uint8), self.device)
        if op is None:
            batch = np.empty(rows.shape, dtype=np.float32)
            _to_float(rows, batch)
        else:
            batch = self._pillow(op, rows, np.float32)
        return torch.from_numpy(batch).permute(0, 3, 1, 2)  # to_tensor's layout: channels-last strides

    def _pillow(self, op: PillowOp, rows: np.ndarray, dtype: type) -> np.ndarray:
        """``op`` on every row: one contiguous slice per thread, the last one in this thread."""
        batch = _Batch(len(rows), dtype)
        slices = _split(0, len(rows), 1 + self.helpers)
        futures = [self.pool.submit(self._fill, op, rows, batch, a, b) for a, b in slices[:-1]] if self.pool else []
        self._fill(op, rows, batch, *slices[-1])
        for f in futures:
            f.result()
        return batch.array

    def _fill(self, op: PillowOp, rows: np.ndarray, batch: _Batch, a: int, b: int) -> None:
        for i in range(a, b):
            batch.store(i, pil_to_array(op(Image.frombytes("RGB", self.size, rows[i]))))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


Job = tuple[int, int]  # (operation index, first image of the chunk)


def _chunks(prepare: Callable[[Job], torch.Tensor], jobs: list[Job], *, join_openmp: bool,
            in_helper: bool) -> Iterator[tuple[Job, torch.Tensor]]:
    """The prepared chunks in order; a helper thread prepares the next one meanwhile, across the
    boundary between two operations too.

    The first chunk is prepared in this thread (there is nothing to overlap it with yet).
    ``join_openmp``: the helper joins OpenMP before the first forward pass (throttled regime).
    Without ``in_helper`` (plain regime with tensor operations) every chunk is prepared in this
    thread, after the forward pass of the previous chunk rather than during it.
    """
    if not in_helper or (len(jobs) == 1 and not join_openmp):
        for job in jobs:
            yield job, prepare(job)
        return
    ahead = ThreadPoolExecutor(max_workers=1)
    pending: deque[tuple[Job, Future[torch.Tensor]]] = deque()
    try:
        joined = ahead.submit(_join_openmp) if join_openmp else None
        current = jobs[0], prepare(jobs[0])
        if joined is not None:
            joined.result()  # the process is throttled from the first forward pass on
        for job in jobs[1:]:
            pending.append((job, ahead.submit(prepare, job)))  # prepared while the model runs on `current`
            if len(pending) >= _LOOKAHEAD:
                yield current
                del current
                job, future = pending.popleft()
                current = job, future.result()
        while True:
            yield current
            del current
            if not pending:
                break
            job, future = pending.popleft()
            current = job, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        ahead.shutdown(wait=True)


# --- the engine -------------------------------------------------------------------------------


def predict_under_operation(model: LoadedModel, images: np.ndarray, *, top_k: int, batch_size: int,
                            device: str, op: PillowOp | None = None, tensor_op: TensorOp | None = None,
                            reference: np.ndarray | None = None, threads: int = 2) -> dict[str, np.ndarray]:
    """Predict every image under one operation (``op`` on PIL images, or ``tensor_op`` on float
    batches; neither: the images as they are), ``batch_size`` images per forward pass.

    Returns, for N images, C classes and k = min(top_k, C):

    * ``labels`` int32 (N, k): the top-k classes under the operation, most probable first;
    * ``probs`` float32 (N, k): the softmax probabilities, under the operation, of ``labels``;
      with a ``reference`` (N, r) (the untransformed top-r), float32 (N, r) of those labels;
    * ``full`` float16 (N, C): the whole softmax output, rounded to nearest (2 bytes per class
      and image; relative error <= 2^-11 from 6e-5 up, absolute <= 3e-8 below, where values
      under 3e-8 become 0). ``labels`` and ``probs`` come from the float32 softmax, so
      ``full``'s argmax may differ from ``labels[:, 0]`` only where float16 makes classes tie.

    ``threads``: threads for the Pillow operations (the torch thread count is the caller's).
    """
    results = predict_under_operations(model, images, [(op, tensor_op)], top_k=top_k, batch_size=batch_size,
                                       device=device, reference=reference, threads=threads)
    return list(results)[0]


@torch.no_grad()  # around every step of the generator
def predict_under_operations(model: LoadedModel, images: np.ndarray, operations: Sequence[Operation], *,
                             top_k: int, batch_size: int, device: str, reference: np.ndarray | None = None,
                             threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """:func:`predict_under_operation` for each ``(op, tensor_op)`` of ``operations`` in turn
    (``(None, None)``: the images as they are), all with the same ``reference``: yields each
    operation's result as soon as its last chunk is predicted, the very arrays that one call per
    operation would return (the same batches in the same layout), but faster when N is small:
    the first chunk of an operation is prepared while the model runs on the last chunk of the
    one before, where one call per operation would prepare it with nothing to overlap. The
    OpenMP regime (see the module notes) is chosen once per call.
    """
    operations = [(op if tensor_op is None else None, tensor_op) for op, tensor_op in operations]
    k = min(top_k, model.num_classes)
    classes, n_images = model.num_classes, len(images)
    width = k if reference is None else np.shape(reference)[1]

    def empty() -> dict[str, np.ndarray]:
        return {"labels": np.zeros((n_images, k), dtype=np.int32),
                "probs": np.zeros((n_images, width), dtype=np.float32),
                "full": np.zeros((n_images, classes), dtype=np.float16)}

    if not n_images:
        for _ in operations:
            yield empty()
        return
    # The OpenMP regime matters only for CPU forward passes on more than one thread.
    choose = device == "cpu" and torch.get_num_threads() > 1
    throttled = choose and _CONTENTION.throttle()
    prepare = _Preparer(images, batch_size, device, max(1, threads),
                        pillow=any(op is not None for op, _ in operations))
    jobs = [(i, start) for i in range(len(operations)) for start in range(0, n_images, batch_size)]
    tensor_ops = any(tensor_op is not None for _, tensor_op in operations)
    chunks = _chunks(lambda job: prepare(operations[job[0]], job[1]), jobs, join_openmp=throttled,
                     in_helper=throttled or not choose or not tensor_ops)
    forward_s = 0.0
    delay_s: float | None = 0.0  # run delay during the forward passes (see _Contention)
    try:
        for (_, position), batch in chunks:
            if position == 0:
                result = empty()
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
            result["labels"][position:position + n] = top.indices.cpu().numpy()
            if reference is None:
                result["probs"][position:position + n] = top.values.cpu().numpy()
            else:
                ref = torch.from_numpy(np.asarray(reference[position:position + n], dtype=np.int64)).to(p.device)
                result["probs"][position:position + n] = p.gather(1, ref).cpu().numpy()
            # float32 -> float16 rounds to nearest even, in torch as in NumPy
            result["full"][position:position + n] = p.to(torch.float16).cpu().numpy()
            del batch, p, top
            if position + n == n_images:
                yield result  # the helper is already preparing the next operation's first chunk
                del result
    finally:
        chunks.close()
        prepare.close()
        if choose:
            _CONTENTION.record(delay_s, forward_s)


def topk_misclassified(labels: np.ndarray, reference_labels: np.ndarray) -> int:
    """How many images no longer have their reference label among the top-k (paper Table 3)."""
    if len(labels) == 0:
        return 0
    return int((~(labels == reference_labels.reshape(-1, 1)).any(axis=1)).sum())
