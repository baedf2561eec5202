"""The prediction engine: top-k labels of every image under one operation, batched.

One operation gives one output size, so a batch stays rectangular. Images are read in chunks
from a memory-mapped array (memory stays bounded); the operation on the next chunk runs in a
thread pool while the model runs on the current one (Pillow releases the GIL in its codecs and
filters, torch in its kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from advbench.imaging import array_to_pil, pil_to_array, to_tensor
from advbench.specs import LoadedModel

PillowOp = Callable[[Any], Any]  # PIL -> PIL
TensorOp = Callable[[torch.Tensor], torch.Tensor]  # float NCHW -> float NCHW


def _pillow_chunk(images: np.ndarray, op: PillowOp | None, pool: ThreadPoolExecutor, device: str) -> torch.Tensor:
    chunk = np.asarray(images)
    if op is not None:
        chunk = np.stack(list(pool.map(lambda a: pil_to_array(op(array_to_pil(a))), chunk)))
    return to_tensor(chunk, device)


def _chunks(images: np.ndarray, batch_size: int, op: PillowOp | None, tensor_op: TensorOp | None,
            device: str, threads: int) -> Iterator[torch.Tensor]:
    starts = range(0, len(images), batch_size)
    if not len(starts):
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        def prepare(start: int):
            part = images[start:start + batch_size]
            if tensor_op is not None:
                return tensor_op(to_tensor(np.asarray(part), device)).clamp_(0, 1)
            return _pillow_chunk(part, op, pool, device)

        with ThreadPoolExecutor(max_workers=1) as ahead:  # one chunk of lookahead
            pending = ahead.submit(prepare, starts[0])
            for nxt in list(starts[1:]) + [None]:
                current = pending.result()
                pending = ahead.submit(prepare, nxt) if nxt is not None else None
                yield current


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
