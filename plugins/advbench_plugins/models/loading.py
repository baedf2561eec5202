"""Building blocks for model plugins: normalisation wrapper, checkpoint loading, torchvision
classifiers from the local weight cache, and ``prepare`` policies (PIL image -> input size).

Models handed to the core take [0, 1] images, so normalisation lives inside the module
(:class:`Normalized`). Nothing here downloads: weights must already be on disk, and a missing
file is a :class:`~advbench.errors.DataError` that says where to put it.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn

from advbench.plugin import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """``net((x - mean) / std)``: lets a net trained on normalised inputs take [0, 1] images."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        # Non-persistent: the wrapper adds no keys to state_dict, so checkpoints stay the net's.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# --- checkpoints ---------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = "; ".join(s.strip() for s in str(exc).splitlines() if s.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: how torch.save files begin: a zip archive (torch >= 1.6), or the legacy format's pickled magic number
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
EXPECTED_CHECKPOINT = ("a file written by torch.save holding only tensors: a state dict, or a dict with one "
                       "under 'state_dict' or 'model'")


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """What the file is, in a few words, judged from its first bytes and the loader's error
    (torch's own message is not passed on: it advises unpickling with weights_only=False)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if not head:
        return "the file is empty"
    if not head.startswith((_ZIP_MAGIC, b"\x80")):  # neither an archive nor a pickle of protocol 2+
        return "it is not a PyTorch file (neither a torch.save archive nor a pickle)"
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it holds a pickled {found.group(1)} object, and only tensors are loaded, never code"
    if head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
        return "it is a truncated or damaged torch.save file"
    return "it is a pickle, not a torch.save file of tensors"


def read_weights(path: Path, what: str = "checkpoint", expected: str = EXPECTED_CHECKPOINT) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is a one-line DataError
    naming the file, saying it is not a readable weights checkpoint and what is expected."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt archive, truncated pickle, pickled objects, not a torch file...
        why = _why_unreadable(path, e)
    # raised outside the handler, so no traceback carries torch's message along
    raise DataError(f"{what} {path} is not a readable weights checkpoint: {why}; expected {expected}")


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_checkpoint(
    path: str | os.PathLike[str], net: nn.Module, *, key: str | None = None, strip_prefix: str = "module."
) -> nn.Module:
    """Load a checkpoint into ``net`` (strictly) and return ``net``; its train/eval mode is unchanged.

    The state dict is ``ckpt[key]`` when ``key`` is given, else ``ckpt["state_dict"]``,
    ``ckpt["model"]`` or the checkpoint itself. ``strip_prefix`` (e.g. DataParallel's
    ``module.``) is removed from the keys that carry it. Any problem raises DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    ckpt = read_weights(path)

    if key is not None:
        if not isinstance(ckpt, Mapping) or key not in ckpt:
            found = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise DataError(f"checkpoint {path} has no key {key!r} (found: {found})")
        state = ckpt[key]
    elif isinstance(ckpt, Mapping) and _is_state_dict(ckpt.get("state_dict")):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, Mapping) and _is_state_dict(ckpt.get("model")):
        state = ckpt["model"]
    else:
        state = ckpt
    if not _is_state_dict(state):
        raise DataError(f"checkpoint {path} holds no state dict (pass key= to pick one)")

    if strip_prefix:
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise DataError(f"checkpoint {path} does not fit {type(net).__name__}: {_one_line(e)}") from e
    if missing or unexpected:
        parts = [f"missing keys: {_few(missing)}"] if missing else []
        parts += [f"unexpected keys: {_few(unexpected)}"] if unexpected else []
        raise DataError(f"checkpoint {path} does not fit {type(net).__name__}: {'; '.join(parts)}")
    return net


# --- torchvision ---------------------------------------------------------------------------


def check_arch(arch: str) -> None:
    """A one-line DataError, with the closest names, unless ``arch`` is a torchvision classifier."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(names)}"
        raise DataError(f"unknown torchvision model {arch!r}{hint}")


def torchvision_classifier(
    arch: str, weights: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> nn.Module:
    """A torchvision classification model by name, wrapped in :class:`Normalized` (ImageNet).

    ``weights``: None (random init), ``"DEFAULT"``, a member name such as ``"IMAGENET1K_V1"``
    or a full name such as ``"ResNet50_Weights.IMAGENET1K_V1"``. The weight file is read only
    from the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``), so it
    is shared with every torch tool and never downloaded. ``cache_dir`` is accepted for a
    uniform plugin signature and is not used: weights do not belong in advbench's cache.
    """
    import torchvision

    del cache_dir
    check_arch(arch)
    if weights is None:
        return Normalized(torchvision.models.get_model(arch, weights=None), IMAGENET_MEAN, IMAGENET_STD)
    w, file = torchvision_weights_file(arch, weights)
    state = read_weights(file, "weights file", expected=f"the file published at {w.url}")
    if not _is_state_dict(state):
        raise DataError(f"weights file {file} holds no state dict; expected the file published at {w.url}")
    try:
        net = _build_with_state_dict(arch, w, state)
    except DataError:
        raise
    except Exception as e:  # the file is a state dict, but of another network
        raise DataError(f"weights file {file} does not fit torchvision {arch}: {_one_line(e)}") from None
    return Normalized(net, IMAGENET_MEAN, IMAGENET_STD)


def torchvision_weights_file(arch: str, weights: str):
    """(the weights enum member, its file in the torch hub cache) of ``arch`` and ``weights``;
    a one-line DataError when the name is unknown or the file absent (checks nothing else:
    cheap enough for ``advbench validate``)."""
    import torchvision

    check_arch(arch)
    enum = torchvision.models.get_model_weights(arch)
    prefix, _, member = weights.rpartition(".")  # accept "ResNet50_Weights.IMAGENET1K_V1" too
    available = [w.name for w in enum]
    if prefix in ("", enum.__name__) and member == "DEFAULT":
        w = enum.DEFAULT
    elif prefix in ("", enum.__name__) and member in available:
        w = enum[member]
    else:
        raise DataError(f"unknown weights {weights!r} for {arch}; available: DEFAULT, {', '.join(available)}")

    file_name = os.path.basename(urlparse(w.url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / file_name
    if not file.is_file():
        raise DataError(
            f"weights {enum.__name__}.{w.name} for {arch} not found: put {file_name} (from {w.url}) in {folder}"
        )
    return w, file


_HUB_PATCH = threading.Lock()


def _build_with_state_dict(arch: str, weights, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=weights)`` with ``state`` as the weights.

    The builder is given the weights so that it applies the settings that go with them (class
    count, Inception's input transform, DenseNet's key renaming, ...), but the state dict it
    asks for comes from ``state``, read with ``weights_only=True``: the weights enum's own
    ``get_state_dict`` goes through ``torch.hub.load_state_dict_from_url``, which unpickles with
    ``weights_only=False`` and downloads what is missing.
    """
    import torchvision

    enum = type(weights)
    own = enum.__dict__.get("get_state_dict")

    def get_state_dict(self, *args, **kwargs):
        if self is not weights:  # a builder asking for other weights too: never download them
            raise DataError(f"torchvision {arch} asked for weights {self!r} as well; advbench loads only {weights!r}")
        return dict(state)

    with _HUB_PATCH:
        enum.get_state_dict = get_state_dict
        try:
            return torchvision.models.get_model(arch, weights=weights)
        finally:
            if own is None:
                del enum.get_state_dict
            else:
                enum.get_state_dict = own


# --- prepare policies ----------------------------------------------------------------------


def imagenet_prepare(resize: int = 256, crop: int = 224) -> Callable[[Image.Image], Image.Image]:
    """Shorter side to ``resize`` (bilinear, antialiased), then a centre ``crop`` x ``crop``.

    This is torchvision's ImageNet evaluation preprocessing (Resize + CenterCrop), done in PIL
    with the same rounding, so accuracies match published numbers.
    """

    def prepare(img: Image.Image) -> Image.Image:
        w, h = img.size
        if (w <= h and w != resize) or (h < w and h != resize):
            size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
            img = img.resize(size, Image.Resampling.BILINEAR)
        w, h = img.size
        if w < crop or h < crop:  # only when crop > resize: pad with black, like CenterCrop
            canvas = Image.new(img.mode, (max(w, crop), max(h, crop)))
            canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
            img, (w, h) = canvas, canvas.size
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        return img.crop((left, top, left + crop, top + crop))

    return prepare


def resize_prepare(size: int | tuple[int, int]) -> Callable[[Image.Image], Image.Image]:
    """Plain resize to ``size`` (int, or (height, width)), bicubic; no crop.

    For small-input models (CIFAR: 32x32) the whole image matters and datasets are already
    square, so aspect ratio is not preserved. Bicubic, because PIL's resize filters over the
    full source footprint (antialiased when shrinking) and keeps edges sharper than bilinear
    when enlarging. Images already at ``size`` are returned untouched: no resampling blur.
    """
    h, w = (size, size) if isinstance(size, int) else size

    def prepare(img: Image.Image) -> Image.Image:
        return img if img.size == (w, h) else img.resize((w, h), Image.Resampling.BICUBIC)

    return prepare
