"""Feature squeezers (Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS 2018) as image operations, in two backends that agree.

- ``bit-depth``: keep ``bits`` bits per colour channel, ``round(x * (2^bits - 1)) / (2^bits - 1)``
  (the paper's joint detectors: 1 bit for MNIST, 5 for CIFAR-10 and ImageNet). Pillow backend on uint8
  pixels, tensor backend on floats; they differ by the final rounding to uint8 (< 0.5/255).
  Its gradient is zero almost everywhere, so ``differentiable = False``: adaptive attacks use a
  straight-through estimator in its place (the feature-squeezing detector does the same).
- ``median``: a ``size`` x ``size`` median filter per channel (the paper's 2x2 for CIFAR-10).
  An even window has no centre; we follow ``scipy.ndimage.median_filter(size=k,
  mode="reflect")``, the SciPy filter the paper's implementation is built on: the window covers
  offsets ``-(k // 2) .. k - 1 - k // 2`` (for 2x2: the pixel, its upper and left neighbours),
  edges are mirrored with the edge pixel repeated (``d c b a | a b c d``), and of an even count
  of values the upper median is taken (rank ``k*k // 2``). The Pillow backend calls SciPy on
  the uint8 pixels (Pillow's own MedianFilter has odd sizes only); the tensor backend selects
  the same rank of the same window, so the two agree exactly on 8-bit images. The median
  routes the gradient to the selected pixel: ``differentiable = True``.

Neither is in the paper's default operation set (``default = False``). A benchmark that names
them gets one operation per entry, or one per value of its own ``grid``, in the group
``squeeze``; ``default_grid`` (``bits`` 4/5/6, ``size`` 2/3) is the grid they would add to a
default set.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from scipy.ndimage import median_filter as scipy_median

from advbench.plugin import Params, TransformSpec, pil_to_array


def _check_batch(batch: torch.Tensor) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(batch.shape)}")


# --- bit-depth reduction ---------------------------------------------------------------------


def bit_depth(image: Image.Image, bits: int) -> Image.Image:
    """Pillow backend: ``bits`` bits per channel, back on the 0..255 scale (rounded)."""
    levels = 2 ** int(bits) - 1
    x = pil_to_array(image).astype(np.float64) / 255
    squeezed = np.rint(x * levels) / levels
    return Image.fromarray(np.rint(squeezed * 255).astype(np.uint8), mode="RGB")


def bit_depth_tensor(batch: torch.Tensor, bits: int) -> torch.Tensor:
    """Tensor backend: ``round(x * (2^bits - 1)) / (2^bits - 1)`` (no gradient)."""
    _check_batch(batch)
    levels = 2 ** int(bits) - 1
    return torch.round(batch * levels) / levels


def bit_depth_ste(batch: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-depth reduction whose backward pass is the identity (straight-through estimator,
    Bengio et al. 2013; BPDA, Athalye et al. 2018): what an adaptive attack differentiates."""
    return batch + (bit_depth_tensor(batch, bits) - batch).detach()


# --- median filter ---------------------------------------------------------------------------


def median_window(size: int) -> tuple[int, int]:
    """Pixels before and after the centre that a ``size``-wide window covers (SciPy's rule)."""
    before = int(size) // 2
    return before, int(size) - 1 - before


def median(image: Image.Image, size: int) -> Image.Image:
    """Pillow backend: ``scipy.ndimage.median_filter(size=(size, size, 1), mode="reflect")``."""
    a = pil_to_array(image)
    return Image.fromarray(scipy_median(a, size=(int(size), int(size), 1), mode="reflect"), mode="RGB")


def _symmetric_index(n: int, before: int, after: int) -> np.ndarray:
    # SciPy's "reflect" (numpy's "symmetric") extension of 0..n-1, as gather indices
    return np.pad(np.arange(n), (before, after), mode="symmetric")


def median_tensor(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Tensor backend: the value of rank ``size*size // 2`` in each window (see the module
    docstring); differentiable (the gradient goes to the selected pixel)."""
    _check_batch(batch)
    size = int(size)
    if size <= 1:
        return batch
    before, after = median_window(size)
    n, c, h, w = batch.shape
    rows = torch.from_numpy(_symmetric_index(h, before, after)).to(batch.device)
    cols = torch.from_numpy(_symmetric_index(w, before, after)).to(batch.device)
    padded = batch.index_select(2, rows).index_select(3, cols)
    windows = padded.unfold(2, size, 1).unfold(3, size, 1).reshape(n, c, h, w, size * size)
    return windows.sort(dim=-1).values[..., (size * size) // 2]


# --- the plugins -----------------------------------------------------------------------------


class BitDepthParams(Params):
    bits: int = Field(5, ge=1, le=8, description="Bits kept per colour channel (Xu et al.'s joint detectors: 1 for "
                                                 "MNIST, 5 for CIFAR-10 and ImageNet).")


class MedianParams(Params):
    size: int = Field(2, ge=1, le=15, description="Median window side in pixels (Xu et al.'s joint detectors: 2); "
                                                  "an even side follows SciPy's window.")


TRANSFORMS = [
    TransformSpec(name="bit-depth", summary="Colour bit-depth reduction, a feature squeezer (Xu et al. 2018).",
                  params=BitDepthParams, apply=lambda im, p: bit_depth(im, p.bits),
                  apply_tensor=lambda b, p: bit_depth_tensor(b, p.bits), differentiable=False,
                  default_grid={"bits": [4, 5, 6]}, default_group="squeeze", default=False),
    TransformSpec(name="median", summary="Median filter (SciPy's window for even sides), a feature squeezer "
                                         "(Xu et al. 2018).",
                  params=MedianParams, apply=lambda im, p: median(im, p.size),
                  apply_tensor=lambda b, p: median_tensor(b, p.size), differentiable=True,
                  default_grid={"size": [2, 3]}, default_group="squeeze", default=False),
]
