"""Tests for the paper's image operations (Pillow reference backend and tensor backend)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from advbench_plugins.transforms import operations as ops


def _natural_like(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """Deterministic photo-like image: smooth, mostly luminance, a hard-edged box, mild noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (5, 5, 1)) + rng.integers(-25, 26, (5, 5, 3))
    low = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8))
    a = np.asarray(low.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    w, h = size
    a[h // 4 : h // 2, w // 3 : 2 * w // 3] = rng.integers(0, 256) + rng.integers(-25, 26, 3)
    a += rng.normal(0, 2, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]) / 255


def _centroid(a: np.ndarray) -> tuple[float, float]:
    """Brightness-weighted (x, y) of pixel centres (pixel i has centre i + 0.5)."""
    g = a.sum(axis=-1) if a.ndim == 3 else a
    ys, xs = np.indices(g.shape)
    return float((g * (xs + 0.5)).sum() / g.sum()), float((g * (ys + 0.5)).sum() / g.sum())


# --- grid -----------------------------------------------------------------------------------


def test_paper_grid_has_38_operations():
    opsl = list(ops.paper_operations())
    assert len(opsl) == 38
    assert [len(next(iter(g.values()))) for g in ops.PAPER_GRID.values()] == [16, 4, 8, 10]
    assert ops.JPEG_QUALITIES[0] == 100 and ops.JPEG_QUALITIES[-1] == 25
    assert len({ops.op_key(f, v) for f, _, v in opsl}) == 38
    assert ops.op_key("rotate", 3.0) == "rotate:3" and ops.op_key("scale", 0.75) == "scale:0.75"


# --- Pillow backend -------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [100, 75, 25])
def test_jpeg_equals_pillow_round_trip(quality):
    im = _natural_like(0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    ref = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = ops.jpeg(im, quality)
    assert out.mode == "RGB" and out.size == im.size and out is not im
    np.testing.assert_array_equal(_arr(out), _arr(ref))


def test_jpeg_q100_close_but_not_identity_and_quality_monotone():
    im = _natural_like(1)
    errs = [np.abs(_arr(ops.jpeg(im, q)) - _arr(im)).mean() for q in (100, 75, 25)]
    assert 0 < errs[0] < 3  # 4:2:0 chroma subsampling makes q100 lossy
    assert errs[0] < errs[1] < errs[2]


def test_blur_sigma_mapping_is_pillow_radius():
    for k in ops.BLUR_KERNEL_SIZES:
        assert ops.blur_sigma(k) == float(k)
        ref = _natural_like(2).filter(ImageFilter.GaussianBlur(radius=k))
        np.testing.assert_array_equal(_arr(ops.gaussian_blur(_natural_like(2), k)), _arr(ref))


def test_blur_of_constant_image_is_constant():
    im = Image.new("RGB", (20, 16), (10, 200, 77))
    out = ops.gaussian_blur(im, 5)
    assert out.size == im.size
    assert (_arr(out) == np.array([10, 200, 77])).all()


@pytest.mark.parametrize("kernel_size", ops.BLUR_KERNEL_SIZES)
def test_blur_spreads_a_line_impulse_with_the_documented_sigma(kernel_size):
    # A bright vertical line; its blurred horizontal profile has variance sigma^2 (exactly for
    # the float tensor backend, up to Pillow's per-pass uint8 rounding for Pillow).
    a = np.zeros((8, 65, 3), np.uint8)
    a[:, 32] = 255
    impulse = Image.fromarray(a)
    pil = _arr(ops.gaussian_blur(impulse, kernel_size))[4, :, 0]
    ten = ops.gaussian_blur_tensor(_batch([impulse]).double(), kernel_size)[0, 0, 4].numpy()
    x = np.arange(a.shape[1]) - 32
    for p, rel in ((pil, 0.05), (ten, 1e-9)):
        assert abs((p * x).sum() / p.sum()) < 1e-9  # centred
        var = (p * x**2).sum() / p.sum()
        assert var == pytest.approx(ops.blur_sigma(kernel_size) ** 2, rel=rel)


def test_rotate_moves_a_marked_pixel_clockwise():
    a = np.zeros((65, 65, 3), np.uint8)
    a[7:10, 31:34] = 255  # 3x3 mark centred at (32.5, 8.5); the image centre is (32.5, 32.5)
    im = Image.fromarray(a)
    angle = 8.0
    t = math.radians(angle)
    expected = (32.5 + 24 * math.sin(t), 32.5 - 24 * math.cos(t))  # clockwise on screen: rightwards
    out = ops.rotate(im, angle)
    assert out.size == im.size and out.mode == "RGB"
    for got in (_arr(out), ops.rotate_tensor(_batch([im]), angle)[0].permute(1, 2, 0).numpy()):
        cx, cy = _centroid(got)
        assert cx > 34.5  # moved right, i.e. clockwise for a point above the centre
        assert (cx, cy) == pytest.approx(expected, abs=0.15)


def test_rotate_fills_black_and_matches_pillow_reference():
    im = Image.new("RGB", (40, 30), (200, 150, 100))
    out = ops.rotate(im, 5)
    ref = im.rotate(-5, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    np.testing.assert_array_equal(_arr(out), _arr(ref))
    assert (_arr(out)[0, 0] == 0).all() and (_arr(out)[15, 20] == [200, 150, 100]).all()


@pytest.mark.parametrize(
    ("factor", "size"),
    [(0.75, 24), (0.8, 26), (0.85, 27), (0.9, 29), (0.95, 30),
     (1.05, 34), (1.1, 35), (1.15, 37), (1.2, 38), (1.25, 40)],
)  # fmt: skip
def test_scale_output_sizes_for_32px(factor, size):
    im = _natural_like(3)
    out = ops.scale(im, factor)
    assert out.size == (size, size)
    ref = im.resize((size, size), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(_arr(out), _arr(ref))
    assert ops.scale_tensor(_batch([im]), factor).shape == (1, 3, size, size)


def test_scaled_size_rounding():
    assert ops.scaled_size(50, 30, 0.85) == (43, 26)  # 42.5 rounds up, 25.5 rounds up
    assert ops.scaled_size(224, 224, 1.15) == (258, 258)
    assert ops.scaled_size(1, 1, 0.75) == (1, 1)


def test_pillow_ops_accept_other_modes_and_return_rgb():
    im = _natural_like(4).convert("L")
    for family, _, value in ops.paper_operations():
        out = ops.PILLOW_OPS[family](im, value)
        assert out.mode == "RGB"


# --- tensor backend -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "value"),
    [("jpeg", 25), ("gaussian_blur", 5), ("rotate", 8.0), ("scale", 0.75), ("scale", 1.25)],
)
def test_tensor_ops_shape_range_dtype(family, value):
    batch = _batch([_natural_like(5, (32, 24)), _natural_like(6, (32, 24))]).double()
    out = ops.TENSOR_OPS[family](batch, value)
    w, h = ops.scaled_size(32, 24, value) if family == "scale" else (32, 24)
    assert out.shape == (2, 3, h, w) and out.dtype == batch.dtype
    assert 0 <= out.min() and out.max() <= 1 + 1e-9


def test_tensor_ops_reject_bad_shape():
    with pytest.raises(ValueError):
        ops.rotate_tensor(torch.zeros(3, 8, 8), 1.0)


def test_tensor_blur_and_rotate_are_differentiable():
    batch = _batch([_natural_like(7)]).requires_grad_(True)
    (ops.gaussian_blur_tensor(batch, 3).sum() + ops.rotate_tensor(batch, 4).sum()).backward()
    assert batch.grad is not None and batch.grad.abs().sum() > 0


# Measured with these images: jpeg 0.000, blur <= 0.31, rotate <= 0.50 (Pillow truncates to
# uint8), scale <= 0.34; on CIFAR-10 the same. Bounds leave margin for other libjpeg builds.
BOUNDS = {"jpeg": 0.5, "gaussian_blur": 0.6, "rotate": 0.8, "scale": 0.6}


def test_backends_are_close():
    images = [_natural_like(10), _natural_like(11), np.asarray(_natural_like(12, (48, 40)))]
    diffs = ops.measure_backend_difference(images)
    assert len(diffs) == 38
    for key, value in diffs.items():
        assert 0 <= value < BOUNDS[key.split(":")[0]], key
    summary = ops.summarize_by_family(diffs)
    assert set(summary) == set(ops.PAPER_GRID)
    assert all(mean <= mx for mean, mx in summary.values())
