"""Image sources read from folders: ``<class>/<image>`` trees and the ILSVRC2012 validation set.

Both yield :class:`advbench.specs.Sample` in a deterministic (sorted) order with RGB PIL images.
Files that cannot be decoded (zero-size, truncated, not an image) are skipped and counted in
``skipped``, with one warning per pass that names the first (a folder of a hundred bad files is
one line, not a hundred); every other pixel format is converted to RGB by :func:`open_rgb`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from advbench.plugin import DataError, Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")

# What PIL raises on broken files: UnidentifiedImageError and "image file is truncated" are
# OSErrors, some decoders raise SyntaxError/ValueError/EOFError, oversized images
# DecompressionBombError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PIL opens 16-bit PNGs as I;16 or I): scale, don't clip, to 8 bits.
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _decode(path: str | os.PathLike[str]) -> Image.Image | str:
    """``path`` opened, fully decoded and converted to RGB, or why it could not be."""
    try:
        if os.path.getsize(path) == 0:
            raise OSError("empty file")
        with Image.open(path) as img:
            img.load()  # decode now: truncation only shows up while decoding
            return _to_rgb(img)  # pixel data stays loaded after the file closes
    except _DECODE_ERRORS as e:
        return str(e) or type(e).__name__


def open_rgb(path: str | os.PathLike[str]) -> Image.Image | None:
    """Open, fully decode and convert ``path`` to RGB; None (with a warning) if unreadable."""
    img = _decode(path)
    if isinstance(img, str):
        warnings.warn(f"skipping unreadable image {path}: {img}", stacklevel=2)
        return None
    return img


class _Unreadable:
    """Counts the files a pass skips and keeps the first with its reason, so that a pass says
    what it skipped in one line: a warning when it read other images, the error when none."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def skip(self, path: Path, why: str) -> None:
        self.count += 1
        self.first = self.first or f"{path}: {why}"

    def summary(self, what: str, root: Path, source) -> None:
        """One warning for the source's first pass that skipped a file (a reader that passes twice,
        as the clean selection does, gets one line, not two)."""
        if self.count and not getattr(source, "_skips_said", False):
            source._skips_said = True
            warnings.warn(f"{what} {root}: skipped {self.count} unreadable file{'s' * (self.count > 1)} "
                          f"(first: {self.first})", stacklevel=3)

    def open(self, path: Path) -> Image.Image | None:
        img = _decode(path)
        if isinstance(img, str):
            self.skip(path, f"unreadable image ({img})")
            return None
        return img

    def nothing_read(self, what: str, root: Path, extensions: Sequence[str]) -> DataError:
        if not self.count:
            return DataError(f"{what} {root} holds no image file (looked for {', '.join(extensions)})")
        return DataError(f"{what} {root} holds no readable image: all {self.count} files were skipped "
                         f"(first: {self.first})")


def _require_dir(root: Path, what: str) -> None:
    if not root.is_dir():
        raise DataError(f"{what} not found: {root}" if not root.exists() else f"{what} is not a folder: {root}")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


class ImageFolderSource:
    """Images in ``root/<class name>/<file>``; class index = rank of the folder name.

    Only files directly inside class folders with one of ``extensions`` (any case) are read;
    hidden files and folders are ignored. ``skip_per_class`` passes over the first readable
    images of each class (in file-name order), then ``limit_per_class`` caps the number of
    *readable* images per class (unreadable files count for neither): two entries with
    complementary ranges split one folder into disjoint parts (a detection set and a reference set). ``skipped`` counts the unreadable files of
    the current (latest) pass.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        limit_per_class: int | None = None,
        skip_per_class: int = 0,
    ):
        self.root = Path(root)
        _require_dir(self.root, "image folder")
        self.extensions = tuple(e.lower() for e in extensions)
        self.limit_per_class = limit_per_class
        self.skip_per_class = skip_per_class
        self.class_names: list[str] = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.class_names:
            raise DataError(f"image folder has no class sub-folders: {self.root}")
        self.skipped = 0

    def _files(self, cls: str) -> list[str]:
        return sorted(
            e.name
            for e in os.scandir(self.root / cls)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(self.extensions)
        )

    def __iter__(self) -> Iterator[Sample]:
        self.skipped = 0
        unreadable, read = _Unreadable(), 0
        try:
            for label, cls in enumerate(self.class_names):
                taken = passed = 0
                for name in self._files(cls):
                    if self.limit_per_class is not None and taken >= self.limit_per_class:
                        break
                    img = unreadable.open(self.root / cls / name)
                    self.skipped = unreadable.count
                    if img is None:
                        continue
                    if passed < self.skip_per_class:
                        passed += 1
                        continue
                    taken += 1
                    read += 1
                    yield Sample(id=f"{cls}/{name}", image=img, label=label)
        finally:  # also when the reader stops early
            if read:
                unreadable.summary("image folder", self.root, self)
        if not read:  # a whole pass and not one image: say why here, where the folder is known
            raise unreadable.nothing_read("image folder", self.root, self.extensions)

    def check(self) -> None:
        """Raise the DataError a pass would end with when no file decodes; stops at the first
        image that does (cheap on a healthy folder)."""
        unreadable = _Unreadable()
        for cls in self.class_names:
            for name in self._files(cls):
                if unreadable.open(self.root / cls / name) is not None:
                    return
        raise unreadable.nothing_read("image folder", self.root, self.extensions)


_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.[A-Za-z]+$")


def _read_class_index(path: Path) -> tuple[list[str], list[str]]:
    """(class names, wnids) from a Keras/torchvision JSON index or a one-class-per-line text file.

    Text lines are ``wnid`` or ``wnid name...`` (``synset_words.txt``); the name defaults to
    the wnid.
    """
    _require_file(path, "class index file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            index = json.loads(text)
            entries = [index[str(i)] for i in range(len(index))]
            return [str(e[1]) for e in entries], [str(e[0]) for e in entries]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"cannot read class index file {path}: {e!r}") from e
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    wnids = [ln.split(maxsplit=1)[0] for ln in lines]
    names = [(ln.split(maxsplit=1) + [ln])[1] for ln in lines]
    return names, wnids


class ImageNetValSource:
    """The ILSVRC2012 validation layout: a flat folder of ``ILSVRC2012_val_XXXXXXXX.JPEG``.

    ``labels_file`` is either one label per line (line i labels image i, numbered from 1), or
    two columns ``<file name or stem> <label>``. A label is an integer (``label_base`` is
    subtracted: 0 for 0-based indices, 1 for 1-based IDs) or a wnid looked up in the class
    index. Beware: the devkit's ``ILSVRC2012_validation_ground_truth.txt`` numbers classes in
    the devkit's ``meta.mat`` order, not the sorted-wnid order torchvision models use; prefer
    a sorted-wnid label file (e.g. Caffe's ``val.txt``) or wnid labels.

    ``class_index_file`` (JSON ``{"0": ["n01440764", "tench"], ...}`` or text, one wnid per
    line) gives ``class_names``; without it names are ``"0"``, ``"1"``, ... (at least 1000).
    Images present in ``root`` are yielded in file-name order; images absent from ``root``
    are not an error (a subset is fine); present images without a label are skipped with a
    warning, like unreadable ones.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labels_file: str | os.PathLike[str],
        class_index_file: str | os.PathLike[str] | None = None,
        *,
        label_base: int = 0,
    ):
        self.root = Path(root)
        _require_dir(self.root, "ImageNet validation folder")
        self.labels_file = Path(labels_file)
        _require_file(self.labels_file, "labels file")
        wnids: list[str] = []
        if class_index_file is not None:
            self.class_names, wnids = _read_class_index(Path(class_index_file))
        self._wnid_index = {w: i for i, w in enumerate(wnids)}
        self.label_base = label_base
        self._by_number, self._by_name = self._read_labels()
        if class_index_file is None:
            top = max([*self._by_number.values(), *self._by_name.values()], default=-1)
            self.class_names = [str(i) for i in range(max(1000, top + 1))]
        self.skipped = 0

    def _label(self, token: str, line_no: int) -> int:
        where = f"{self.labels_file}:{line_no}"
        if re.fullmatch(r"[+-]?\d+", token):
            label = int(token) - self.label_base
        elif token in self._wnid_index:
            label = self._wnid_index[token]
        else:
            hint = "" if self._wnid_index else " (wnid labels need a class index file)"
            raise DataError(f"{where}: bad label {token!r}{hint}")
        if label < 0 or (self._wnid_index and label >= len(self._wnid_index)):
            raise DataError(f"{where}: label {token} out of range (label_base={self.label_base})")
        return label

    def _read_labels(self) -> tuple[dict[int, int], dict[str, int]]:
        """Labels keyed by image number (one-column form) or by file name and stem (two-column)."""
        try:
            lines = self.labels_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read labels file {self.labels_file}: {e}") from e
        by_number: dict[int, int] = {}
        by_name: dict[str, int] = {}
        columns = None
        for no, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if columns is None:
                columns = len(fields)
            if len(fields) != columns or columns > 2:
                raise DataError(f"{self.labels_file}:{no}: expected 'label' or 'file label' on every line")
            if columns == 1:
                by_number[len(by_number) + 1] = self._label(fields[0], no)
            else:
                label = self._label(fields[1], no)
                by_name[fields[0]] = label
                by_name.setdefault(Path(fields[0]).stem, label)
        if columns is None:
            raise DataError(f"labels file is empty: {self.labels_file}")
        return by_number, by_name

    def _lookup(self, name: str) -> int | None:
        if self._by_name:
            return self._by_name.get(name, self._by_name.get(Path(name).stem))
        m = _VAL_NAME.match(name)
        return self._by_number.get(int(m.group(1))) if m else None

    def __iter__(self) -> Iterator[Sample]:
        self.skipped = 0
        names = sorted(
            e.name
            for e in os.scandir(self.root)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        unreadable, read = _Unreadable(), 0
        try:
            for name in names:
                label = self._lookup(name)
                if label is None:
                    unreadable.skip(self.root / name, f"no label in {self.labels_file}")
                img = None if label is None else unreadable.open(self.root / name)
                self.skipped = unreadable.count
                if img is None:
                    continue
                read += 1
                yield Sample(id=name, image=img, label=label)
        finally:
            if read:
                unreadable.summary("ImageNet validation folder", self.root, self)
        if not read:
            raise unreadable.nothing_read("ImageNet validation folder", self.root, IMAGE_EXTENSIONS)
