"""The labelled reference set of the model-aware detectors (``[detection] references``): a
dataset's images, prepared for the model, with their true labels, checked disjoint from the
images of the benchmark they serve."""

from __future__ import annotations

import hashlib

import numpy as np

from advbench.errors import DataError
from advbench.execution.context import CellContext
from advbench.imaging import pil_to_array
from advbench.plan import Cell
from advbench.specs import ReferenceSet


def _digests(images: np.ndarray) -> set[bytes]:
    return {hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest() for a in images}


def reference_set(ctx: CellContext, cell: Cell) -> ReferenceSet | None:
    """The reference set of ``cell``'s dataset for its model, or None where none is named.
    A DataError when it is empty, has other classes, or shares an image with the clean set.
    Read once per context: every detect cell of a model-aware detector (per attack, per search
    candidate) asks for it."""
    if ctx.bench.reference_for(cell.dataset) is None:
        return None
    key = (cell.dataset, cell.model)
    if key not in ctx._references:
        ctx._references[key] = _read(ctx, cell)
    return ctx._references[key]


def _read(ctx: CellContext, cell: Cell) -> ReferenceSet:
    entry = ctx.bench.reference_for(cell.dataset)
    source, model = ctx.dataset(entry.label), ctx.model(cell.model)
    if len(source.class_names) != model.num_classes:
        raise DataError(f"reference dataset {entry.label!r} has {len(source.class_names)} classes, model "
                        f"{cell.model!r} {model.num_classes}; [detection] references must name a dataset of the same classes")
    samples = list(source)
    if not samples:
        raise DataError(f"reference dataset {entry.label!r} holds no image")
    images = np.stack([pil_to_array(model.prepare(s.image)) for s in samples])
    labels = np.asarray([s.label for s in samples], dtype=np.int64)
    clean = np.asarray(ctx.clean_arrays(cell)["images"])
    shared = _digests(images) & _digests(clean)
    if shared:
        raise DataError(f"reference dataset {entry.label!r} shares {len(shared)} images with dataset "
                        f"{cell.dataset!r} (pixel for pixel): a reference set must be disjoint from the images "
                        "detectors are fitted and scored on; select other files (e.g. skip_per_class / limit_per_class)")
    return ReferenceSet(images, labels)
