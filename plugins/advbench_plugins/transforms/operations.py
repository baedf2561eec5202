"""The paper's four image operations (Nguyen et al. 2019, sec. 3.1), in two backends.

Pillow backend (the reference; the paper used Pillow 6.1.0): pure functions on RGB PIL images
that return a new RGB PIL image. Tensor backend: the same operations on float batches
``(N, 3, H, W)`` in [0, 1] via torchvision, matching the Pillow semantics as closely as
reasonable (same sigma, same output size, clockwise, bilinear, black fill). The two backends are
not bit-identical; :func:`measure_backend_difference` quantifies the gap.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# --- the paper's grid: 16 + 4 + 8 + 10 = 38 operations ---------------------------------------

JPEG_QUALITIES: tuple[int, ...] = tuple(range(100, 24, -5))
BLUR_KERNEL_SIZES: tuple[int, ...] = (2, 3, 4, 5)
ROTATION_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(1, 9))
SCALE_FACTORS: tuple[float, ...] = (0.75, 0.8, 0.85, 0.9, 0.95, 1.05, 1.1, 1.15, 1.2, 1.25)

#: family -> {parameter name: values}; the shape of ``TransformSpec.default_grid`` per family.
PAPER_GRID: Mapping[str, Mapping[str, tuple[Any, ...]]] = {
    "jpeg": {"quality": JPEG_QUALITIES},
    "gaussian_blur": {"kernel_size": BLUR_KERNEL_SIZES},
    "rotate": {"angle": ROTATION_ANGLES},
    "scale": {"factor": SCALE_FACTORS},
}


def paper_operations() -> Iterator[tuple[str, str, Any]]:
    """Yield ``(family, parameter name, value)`` for the paper's 38 operations, in paper order."""
    for family, grid in PAPER_GRID.items():
        for param, values in grid.items():
            for value in values:
                yield family, param, value


# --- Pillow backend -------------------------------------------------------------------------


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode ``image`` as JPEG in memory at ``quality`` (1..100) with Pillow and decode it.

    Only ``quality`` is passed, so Pillow's defaults apply: chroma subsampling is libjpeg's
    default 4:2:0 at every quality (including 100; hence q100 is not lossless), baseline,
    no optimisation, standard IJG tables scaled by quality.
    """
    buf = io.BytesIO()
    _rgb(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def blur_sigma(kernel_size: int) -> float:
    """Gaussian standard deviation (pixels) used for the paper's blur "kernel size".

    Mapping: ``sigma = kernel_size``, i.e. the value is passed unchanged as Pillow's
    ``GaussianBlur(radius)``, whose ``radius`` *is* the standard deviation. Why: the paper used
    Pillow, whose only Gaussian filter is ``GaussianBlur(radius)``; its fixed-kernel filter
    (``ImageFilter.Kernel``) accepts only 3x3 and 5x5, so the sizes 2 and 4 can only be that
    radius. The paper's Table 3 agrees: the "3x3" blur misclassified 329 normal images (top-5),
    3-10x more than any other operation, far more than a 3-tap kernel (sigma ~0.75) would.
    """
    return float(kernel_size)


def gaussian_blur(image: Image.Image, kernel_size: int) -> Image.Image:
    """Gaussian blur with ``sigma = blur_sigma(kernel_size)`` (see there) via Pillow.

    Pillow approximates the Gaussian with three extended box blurs and clamps at the edges.
    """
    return _rgb(image).filter(ImageFilter.GaussianBlur(radius=blur_sigma(kernel_size)))


def rotate(image: Image.Image, angle: float) -> Image.Image:
    """Rotate clockwise by ``angle`` degrees about the centre, keeping the size (corners cut).

    Pillow rotates counter-clockwise for positive angles, hence ``-angle``. Bilinear
    resampling; uncovered pixels become black (0, 0, 0). The paper does not rotate back.
    """
    return _rgb(image).rotate(
        -float(angle), resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0)
    )


def scaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """``(width, height)`` times ``factor``, rounded half up, at least 1 pixel each."""
    # The 1e-9 keeps e.g. 30 * 0.85 = 25.4999999... from rounding down.
    return (
        max(1, math.floor(width * factor + 0.5 + 1e-9)),
        max(1, math.floor(height * factor + 0.5 + 1e-9)),
    )


def scale(image: Image.Image, factor: float) -> Image.Image:
    """Resize by ``factor`` with Pillow's bilinear filter (antialiased when shrinking).

    Not scaled back, as in the paper: the output size differs from the input, and the model's
    ``prepare`` step later maps it to the input size.
    """
    image = _rgb(image)
    return image.resize(scaled_size(*image.size, factor), resample=Image.Resampling.BILINEAR)


# --- tensor backend -------------------------------------------------------------------------


def _check_batch(batch: torch.Tensor) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(batch.shape)}")


def _to_uint8(batch: torch.Tensor) -> torch.Tensor:
    return (batch * 255).round_().clamp_(0, 255).to(torch.uint8)


def jpeg_tensor(batch: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of each image with torchvision's libjpeg (4:2:0, like Pillow).

    Pixels are rounded to uint8 first, as a JPEG file holds 8-bit samples. Runs on the CPU;
    the result is returned on the batch's device and dtype.
    """
    _check_batch(batch)
    images = list(_to_uint8(batch.detach()).cpu())
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of torchcodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(images, quality=int(quality)))
    return torch.stack(decoded).to(device=batch.device, dtype=batch.dtype) / 255


def _box_radius(sigma: float, passes: int = 3) -> float:
    # Pillow's extended-box radius: `passes` boxes of this radius have variance sigma^2
    # (Gwosdek et al. 2011, as in Pillow's ImagingGaussianBlur).
    sigma2 = sigma * sigma / passes
    n = math.floor((math.sqrt(12 * sigma2 + 1) - 1) / 2)  # whole part
    a = (2 * n + 1) * (n * (n + 1) - 3 * sigma2) / (6 * (sigma2 - (n + 1) ** 2))
    return n + a


def gaussian_blur_tensor(batch: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with the Pillow backend's sigma (``blur_sigma``), the way Pillow does it.

    Like Pillow: three extended box blurs per axis (radius from :func:`_box_radius`), each
    with edge replication. Unlike Pillow, no rounding to uint8 between passes. A true Gaussian
    of the same sigma was measured 3-6x further from Pillow (0.8-1.7 vs 0.3 mean abs diff on
    CIFAR-10), torchvision's ``gaussian_blur`` (reflecting edges) 4-12x. Differentiable.
    """
    _check_batch(batch)
    r = _box_radius(blur_sigma(kernel_size))
    n = math.floor(r)
    k = torch.ones(2 * n + 3, device=batch.device, dtype=batch.dtype)
    k[0] = k[-1] = r - n  # the two partially covered end pixels
    k = k / (2 * r + 1)
    c = batch.shape[1]
    kx, ky = k.view(1, 1, 1, -1).expand(c, 1, 1, -1), k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    out = batch
    for _ in range(3):
        out = torch.nn.functional.pad(out, (n + 1, n + 1, 0, 0), mode="replicate")
        out = torch.nn.functional.conv2d(out, kx, groups=c)
    for _ in range(3):
        out = torch.nn.functional.pad(out, (0, 0, n + 1, n + 1), mode="replicate")
        out = torch.nn.functional.conv2d(out, ky, groups=c)
    return out


def rotate_tensor(batch: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate clockwise by ``angle`` degrees about the centre, same size, bilinear, fill 0.

    Mimics Pillow's border rule: a pixel whose source point lies inside the image is sampled
    with edge-clamped neighbours, any other pixel is black (torchvision alone would blend with
    the fill over a 1 px band). Done with a 1 px replicate pad and a nearest-rotated mask.
    Pillow truncates its bilinear result to uint8, this stays float (about 0.5/255 apart).
    """
    _check_batch(batch)
    angle = -float(angle)  # torchvision, like Pillow, turns counter-clockwise for angle > 0
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1), mode="replicate")
    out = TF.rotate(padded, angle, interpolation=InterpolationMode.BILINEAR)[..., 1:-1, 1:-1]
    # Nearest sampling of ones is 1 exactly where the source point lies in [0, W) x [0, H).
    ones = torch.ones_like(batch[:1, :1])
    mask = TF.rotate(ones, angle, interpolation=InterpolationMode.NEAREST)
    return out * mask


def scale_tensor(batch: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize by ``factor`` to the Pillow backend's size; bilinear, antialiased like Pillow."""
    _check_batch(batch)
    w, h = scaled_size(batch.shape[-1], batch.shape[-2], factor)
    out = TF.resize(batch, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out.clamp(0, 1)  # weights are non-negative; this only guards float error


# --- backend comparison ---------------------------------------------------------------------

PILLOW_OPS: Mapping[str, Callable[[Image.Image, Any], Image.Image]] = {
    "jpeg": jpeg,
    "gaussian_blur": gaussian_blur,
    "rotate": rotate,
    "scale": scale,
}
TENSOR_OPS: Mapping[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {
    "jpeg": jpeg_tensor,
    "gaussian_blur": gaussian_blur_tensor,
    "rotate": rotate_tensor,
    "scale": scale_tensor,
}


def op_key(family: str, value: Any) -> str:
    """Name of one operation in result tables, e.g. ``"jpeg:95"`` or ``"scale:0.75"``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{family}:{value}"


def measure_backend_difference(images: Sequence[Any]) -> dict[str, float]:
    """Mean absolute pixel difference (0..255 scale) between the two backends, per operation.

    ``images``: RGB uint8 images, as PIL images or ``(H, W, 3)`` arrays; sizes may differ
    (each size is batched separately). Keys are :func:`op_key` names of the paper's 38
    operations. The tensor output is compared unrounded (it is what a model would receive).
    """
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for im in images:
        a = np.asarray(_rgb(im) if isinstance(im, Image.Image) else im, dtype=np.uint8)
        groups.setdefault(a.shape, []).append(a)
    batches = [
        ([Image.fromarray(a) for a in g], torch.from_numpy(np.stack(g)).permute(0, 3, 1, 2) / 255)
        for g in groups.values()
    ]
    result: dict[str, float] = {}
    for family, _, value in paper_operations():
        total, count = 0.0, 0
        for pils, batch in batches:
            with torch.no_grad():
                t_out = TENSOR_OPS[family](batch, value).permute(0, 2, 3, 1).numpy() * 255
            p_out = np.stack([np.asarray(PILLOW_OPS[family](im, value), np.float32) for im in pils])
            diff = np.abs(p_out - t_out)
            total, count = total + float(diff.sum()), count + diff.size
        result[op_key(family, value)] = total / count
    return result


def summarize_by_family(diffs: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Per family, ``(mean, max)`` of the per-operation values of ``measure_backend_difference``."""
    by_family: dict[str, list[float]] = {}
    for key, value in diffs.items():
        by_family.setdefault(key.split(":")[0], []).append(value)
    return {f: (float(np.mean(v)), float(np.max(v))) for f, v in by_family.items()}
