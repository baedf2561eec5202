"""The prediction engine: top-k labels of every image under one operation, batched.

One operation gives one output size, so a batch stays rectangular. Images are read in chunks
from a memory-mapped array (memory stays bounded: the chunk being predicted plus ``_LOOKAHEAD``
chunks being prepared); the operation on the next chunk runs in helper threads while the model
runs on the current one (Pillow releases the GIL in its codecs and filters, torch in its kernels).

Performance notes (``bench/feature_extraction.py`` measures them; see ``bench/README.md``):

* Pillow conversions go through ``Image.frombytes`` / ``Image.tobytes`` rather than
  ``Image.fromarray`` / ``np.asarray``: the same pixels, several times less per-image overhead,
  which matters at 32x32 where the conversions cost as much as the operation.
* A chunk is split into one contiguous slice per Pillow thread (not one task per image), and the
  arrays the engine owns are handed to torch without the defensive copy of ``to_tensor``.
* The uint8 -> float conversion (and a tensor operation) runs in the helper thread, not in the
  calling thread. Besides taking it off the forward pass's path, this gives the helper an OpenMP
  team of its own; libgomp then has more OpenMP threads than CPUs and throttles its spin-waiting
  at barriers. On a busy machine a 2-thread forward pass that spin-waits loses whole time slices
  to a descheduled team mate: moving the conversion into the calling thread measured 3-6x slower
  forward passes on a shared 2-core machine.
* Deliberately unchanged, to keep results bit-identical: the batch composition (``batch_size``
  chunks; oneDNN results depend on the batch size), the input layout (the channels-last strides
  ``to_tensor`` produces; a contiguous or ``channels_last`` model changes the last bits), the
  torch thread count (global state of the caller). ``torch.inference_mode`` is not used: a model
  that caches a tensor during its first forward pass would then hold an inference tensor that
  later breaks gradient attacks; ``no_grad`` costs the same here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from advbench.imaging import array_to_pil, pil_to_array, to_tensor
from advbench.specs import LoadedModel

PillowOp = Callable[[Any], Any]  # PIL -> PIL
TensorOp = Callable[[torch.Tensor], torch.Tensor]  # float NCHW -> float NCHW

_LOOKAHEAD = 1  # chunks prepared ahead of the one being predicted (Pillow ops are much cheaper than the model)


def _uint8_to_float(owned: np.ndarray, device: str) -> torch.Tensor:
    """``to_tensor`` for an array nobody else holds: the same result, without its copy."""
    return torch.from_numpy(owned).to(device).permute(0, 3, 1, 2).float().div_(255)


def _rgb_array(image: Image.Image) -> np.ndarray:
    """``pil_to_array`` without its copies: (H, W, 3) uint8, read-only."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(h, w, 3)


def _apply_op(op: PillowOp, rows: np.ndarray) -> list[np.ndarray]:
    """``op`` on each (H, W, 3) uint8 row, C-contiguous."""
    if rows.ndim != 4 or rows.shape[-1] != 3:  # not RGB rows: the general (slower) conversions
        return [pil_to_array(op(array_to_pil(a))) for a in rows]
    size = (rows.shape[2], rows.shape[1])
    return [_rgb_array(op(Image.frombytes("RGB", size, a))) for a in rows]


def _pillow_chunk(part: Any, op: PillowOp, pool: ThreadPoolExecutor | None, threads: int,
                  device: str) -> torch.Tensor:
    """The chunk under ``op``: one contiguous slice per thread, the last one in this thread."""
    rows = np.ascontiguousarray(part, dtype=np.uint8)
    n = len(rows)
    pieces = max(1, min(threads, n)) if pool is not None else 1
    bounds = [n * i // pieces for i in range(pieces + 1)]
    futures = [pool.submit(_apply_op, op, rows[a:b]) for a, b in zip(bounds[:-2], bounds[1:-1])] if pool else []
    last = _apply_op(op, rows[bounds[-2]:])
    arrays = [a for f in futures for a in f.result()] + last
    return _uint8_to_float(np.stack(arrays), device)


def _prepare(images: Any, start: int, batch_size: int, op: PillowOp | None, tensor_op: TensorOp | None,
             pool: ThreadPoolExecutor | None, threads: int, device: str) -> torch.Tensor:
    part = images[start:start + batch_size]
    if op is not None and tensor_op is None:
        return _pillow_chunk(part, op, pool, threads, device)
    batch = to_tensor(np.asarray(part), device)  # copies the (memory-mapped) rows once
    if tensor_op is not None:
        batch = tensor_op(batch).clamp_(0, 1)
    return batch


def _chunks(images: Any, batch_size: int, op: PillowOp | None, tensor_op: TensorOp | None,
            device: str, threads: int) -> Iterator[torch.Tensor]:
    upcoming = iter(range(0, len(images), batch_size))
    threads = max(1, threads)
    # ``ahead`` prepares the chunks in order; ``pool`` lends it ``threads - 1`` more Pillow threads.
    pool = ThreadPoolExecutor(max_workers=threads - 1) if threads > 1 else None
    ahead = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[torch.Tensor]] = []

    def submit() -> None:
        start = next(upcoming, None)
        if start is not None:
            pending.append(ahead.submit(_prepare, images, start, batch_size, op, tensor_op, pool, threads, device))

    try:
        submit()
        while pending:
            current = pending.pop(0).result()
            for _ in range(_LOOKAHEAD - len(pending)):  # prepare the next while the model runs on this one
                submit()
            yield current
            del current
    finally:
        for f in pending:
            f.cancel()
        ahead.shutdown(wait=True)
        if pool is not None:
            pool.shutdown(wait=True)


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
    position = 0
    for batch in _chunks(images, batch_size, op, tensor_op, device, threads):
        p = torch.softmax(model.module(batch).float(), dim=1)
        top = p.topk(k, dim=1)
        n = len(batch)
        labels[position:position + n] = top.indices.cpu().numpy()
        if reference is None:
            probs[position:position + n] = top.values.cpu().numpy()
        else:
            ref = torch.from_numpy(np.asarray(reference[position:position + n], dtype=np.int64)).to(p.device)
            probs[position:position + n] = p.gather(1, ref).cpu().numpy()
        position += n
    return {"labels": labels, "probs": probs}


def topk_misclassified(labels: np.ndarray, reference_labels: np.ndarray) -> int:
    """How many images no longer have their reference label among the top-k (paper Table 3)."""
    if len(labels) == 0:
        return 0
    return int((~(labels == reference_labels.reshape(-1, 1)).any(axis=1)).sum())
