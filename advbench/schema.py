"""The cell schema, written once: what a cell is named by, and what one per-image row holds.

:class:`Cell` is what the planner makes and the executors run; the store's ``cells`` columns
(:mod:`advbench.store.models`), the cell columns beside each per-image row
(``Store.images``) and the columns of ``advbench export`` are all derived from its fields, in
this order. :class:`ImageRow` does the same for the per-image columns. Each field's metadata
says how it is stored (``text`` of a length, ``float``, ``bool``, ``int``; ``None``: not stored)
and whether it travels with the per-image rows.

A cell names what it computes, each field one thing:

- the image set it makes, predicts or scores (``imageset``: its label, e.g. ``pgd-grid@0.004``
  or ``eot-pgd@0.008>svm/differences/JPEG``) and that set's origin, explicit rather than packed
  into the label: the attack ``entry`` that made it, the entry's ``family`` (the label without
  its budget) and ``plugin``, the ``budget`` and its ``norm``, the ``threat`` model and, for an adaptive set,
  the ``target`` defense;
- the image ``operation`` a predict cell applies and the transform group it belongs to
  (``operation_group``);
- the detector a detect, score, subset or adaptive cell fits, applies or attacks: its
  ``feature_group`` (the operations whose labels the feature reads; ``images`` for detectors
  that see the images), ``feature`` and ``detector``; and the corrector of a correct or score
  cell with the group it votes over (``correction_group``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

IMAGES = "images"  # the "feature group" of detectors that see the images themselves
PER_ATTACK = "per-attack:"  # holdout of a detector cell trained on one attack alone (and scored on it)


def _text(length: int = 200, per_image: bool = True) -> dict[str, Any]:
    return {"store": "text", "length": length, "per_image": per_image}


_FLOAT = {"store": "float", "per_image": True}
_BOOL = {"store": "bool", "per_image": True}


@dataclass(frozen=True)
class Cell:
    """One unit of work, named by the content hash (``key``) of everything that determines it."""

    stage: str = field(metadata=_text(20))
    key: str = field(metadata=_text(64))
    dataset: str = field(default="", metadata=_text())
    model: str = field(default="", metadata=_text())
    #: the image set made (attack, adaptive), predicted (predict) or scored (score)
    imageset: str = field(default="", metadata=_text())
    #: the attack or adaptive entry that made the image set ("" for the clean set)
    entry: str = field(default="", metadata=_text())
    #: that entry's label without its budget: the points of one budget grid share it
    family: str = field(default="", metadata=_text())
    #: the attack plugin of that entry: a grid and a primary attack of one plugin share it
    plugin: str = field(default="", metadata=_text())
    budget: float | None = field(default=None, metadata=_FLOAT)
    norm: str = field(default="", metadata=_text(10))  # the norm of the budget: linf, l2, l1, l0 or ""
    threat: str = field(default="", metadata=_text(40))  # "clean", "oblivious" or "adaptive"
    target: str = field(default="", metadata=_text())  # adaptive sets: the defense they were made against
    evaluation: bool = field(default=False, metadata=_BOOL)  # an evaluation set: eval sources only, never trained on
    operation: str = field(default="", metadata=_text())  # predict: the image operation ("original": none)
    operation_group: str = field(default="", metadata=_text())  # predict: the operation's transform group
    feature_group: str = field(default="", metadata=_text())  # the detector's group of operations, or "images"
    feature: str = field(default="", metadata=_text())
    detector: str = field(default="", metadata=_text())
    correction_group: str = field(default="", metadata=_text())  # correct, score: the group voted over
    corrector: str = field(default="", metadata=_text())
    #: detect: the attack (or partition) kept out of training and scored alone, or
    #: "per-attack:<attack>": trained on that attack alone and scored on it
    holdout: str = field(default="", metadata=_text())
    deps: tuple[str, ...] = field(default=(), metadata={"store": None, "per_image": False})

    @property
    def sees_images(self) -> bool:
        """Its detector reads the images (or the model): a detect cell of one, or a score cell
        scoring one."""
        return self.feature_group == IMAGES and bool(self.detector)

    @property
    def title(self) -> str:
        parts = [self.dataset, self.model, self.imageset, self.operation, self.feature_group, self.feature,
                 self.detector, self.correction_group, self.corrector]
        if self.stage in ("adaptive", "robust"):  # its label names the defense already
            parts = [self.dataset, self.model, self.imageset]
        title = f"{self.stage}:" + "/".join(p for p in parts if p)
        if self.holdout.startswith(PER_ATTACK):
            title += f" (trained on {self.holdout.removeprefix(PER_ATTACK)} alone)"
        elif self.holdout:
            title += f" (unseen {self.holdout})"
        return title


@dataclass(frozen=True)
class ImageRow:
    """One image as a detect, score or correct cell saw it (``Store.images``, ``advbench export``)."""

    idx: int = field(metadata={"store": "int", "required": False})
    source: str = field(metadata={"store": "text", "length": None, "required": True})  # the source image's id
    origin: str = field(metadata={"store": "text", "length": 200, "required": True})  # "clean" or its image set
    split: str = field(metadata={"store": "text", "length": 20, "required": True})  # train, dev, eval, unused
    y: int = field(metadata={"store": "int", "required": True})  # 1 = adversarial
    truth: int = field(metadata={"store": "int", "required": True})  # the source image's ground-truth label
    score: float | None = field(default=None, metadata={"store": "float", "required": False})
    decision: int | None = field(default=None, metadata={"store": "int", "required": False})
    label: int | None = field(default=None, metadata={"store": "int", "required": False})  # e.g. a corrector's top-1
    logit_0: float | None = field(default=None, metadata={"store": "float", "required": False})  # a binary
    logit_1: float | None = field(default=None, metadata={"store": "float", "required": False})  # detector's (Fig. 2)


#: the cell's stored columns, in order (the key and stage first)
CELL_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Cell) if f.metadata["store"])
#: the cell's columns beside each per-image row (``cell_key`` is the cell's ``key``)
IMAGE_CELL_COLUMNS: tuple[str, ...] = ("cell_key", *(f.name for f in fields(Cell)
                                                     if f.metadata["per_image"] and f.name not in ("key",)))
#: the per-image columns, in order; the required ones
IMAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ImageRow))
REQUIRED_IMAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ImageRow) if f.metadata["required"])


def column_kind(name: str) -> str:
    """How a column of ``Store.images`` (cell or image) is typed: text, float, int or bool."""
    if name == "cell_key":
        return "text"
    for f in (*fields(Cell), *fields(ImageRow)):
        if f.name == name and f.metadata["store"]:
            return f.metadata["store"]
    raise KeyError(name)


def cell_values(cell: Any) -> dict[str, Any]:
    """The stored columns of a cell (read by attribute; ``key`` left out: it is the row's key)."""
    return {name: getattr(cell, name) for name in CELL_COLUMNS if name != "key"}
