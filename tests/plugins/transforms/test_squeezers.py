"""The feature squeezers as image operations: backends agree, SciPy's window, gradients, specs."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import median_filter

from advbench.specs import TransformSpec
from advbench.testing import check_transform, registry_with
from advbench_plugins.transforms import paper_ops
from advbench_plugins.transforms.squeezers import (TRANSFORMS, bit_depth, bit_depth_ste, bit_depth_tensor, median,
                                                   median_tensor)

SPECS = {s.name: s for s in TRANSFORMS}


def grid(spec):
    return [spec.params(**{k: v}) for k, values in spec.default_grid.items() for v in values]


@pytest.mark.parametrize("params", grid(SPECS["bit-depth"]), ids=str)
def test_bit_depth_backends_agree_within_rounding(params):
    assert check_transform(SPECS["bit-depth"], params, tolerance=0.5) <= 0.5


@pytest.mark.parametrize("params", grid(SPECS["median"]), ids=str)
def test_median_backends_agree_exactly(params):
    assert check_transform(SPECS["median"], params, tolerance=1e-4) < 1e-4  # float32 error of v / 255 * 255


def test_the_paper_operations_pass_check_transform_too():
    for spec in paper_ops.TRANSFORMS:
        assert check_transform(spec) < 1.0


def test_bit_depth_by_hand():
    a = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    one = np.asarray(bit_depth(Image.fromarray(a), 1))
    assert set(np.unique(one)) == {0, 255} and (one[a < 128] == 0).all() and (one[a >= 128] == 255).all()
    five = np.asarray(bit_depth(Image.fromarray(a), 5))
    assert len(np.unique(five)) == 32
    x = torch.tensor([0.0, 0.2, 0.5, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert torch.allclose(bit_depth_tensor(x, 2)[0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


def test_median_2x2_uses_the_pixel_and_its_upper_and_left_neighbours_and_the_upper_median():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    a[0, 1] = 100  # a lone bright pixel
    a[2, 2], a[2, 3], a[3, 2] = 50, 60, 70
    out = np.asarray(median(Image.fromarray(a), 2))[..., 0]
    # the mirrored top row makes (0,1) and (0,2) see the bright pixel twice: upper median of {0,0,100,100}
    # (2,3): {0, 0, 50, 60} -> 50; (3,2): {0, 50, 0, 70} -> 50; (3,3): {50, 60, 70, 0} -> 60
    expected = np.array([[0, 100, 100, 0], [0, 0, 0, 0], [0, 0, 0, 50], [0, 0, 50, 60]])
    assert np.array_equal(out, expected)
    assert np.array_equal(out, median_filter(a[..., 0], size=2, mode="reflect"))


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_median_tensor_matches_scipy_on_odd_sized_images(size):
    rng = np.random.default_rng(size)
    a = rng.integers(0, 256, (2, 7, 9, 3)).astype(np.uint8)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    got = (median_tensor(x, size) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, np.stack([median_filter(i, size=(size, size, 1), mode="reflect") for i in a]))


def test_median_routes_the_gradient_to_the_selected_pixels():
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    median_tensor(x, 3).sum().backward()
    assert x.grad.sum().item() == pytest.approx(3 * 6 * 6)  # one selected pixel per output
    assert set(x.grad.unique().tolist()) <= set(range(10))


def test_bit_depth_has_no_gradient_but_its_straight_through_version_is_the_identity():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    y = bit_depth_ste(x, 3)
    assert torch.equal(y.detach(), bit_depth_tensor(x.detach(), 3))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_specs_are_squeezers_outside_the_default_set_and_the_paper_ops_inside():
    assert SPECS["bit-depth"].differentiable is False and SPECS["median"].differentiable is True
    assert all(s.default_group == "squeeze" and not s.default for s in TRANSFORMS)
    assert dict(SPECS["bit-depth"].default_grid) == {"bits": [4, 5, 6]}
    assert dict(SPECS["median"].default_grid) == {"size": [2, 3]}
    registry = registry_with()
    defaults = {e.spec.name for e in registry.entries("transform") if e.spec.default}
    assert defaults == {"jpeg", "blur", "rotation", "scaling"}


def test_check_transform_catches_backends_that_disagree_and_a_false_gradient_claim():
    shifted = TransformSpec(name="shifted", summary="x", apply=lambda im, p: im,
                            apply_tensor=lambda b, p: (b + 0.1).clamp(0, 1))
    with pytest.raises(AssertionError, match="backends differ"):
        check_transform(shifted)
    no_grad = TransformSpec(name="no-grad", summary="x", apply=lambda im, p: im,
                            apply_tensor=lambda b, p: b.detach().clone(), differentiable=True)
    with pytest.raises(AssertionError, match="no gradient"):
        check_transform(no_grad)
    gray = TransformSpec(name="gray", summary="x", apply=lambda im, p: im.convert("L"))
    with pytest.raises(AssertionError, match="RGB"):
        check_transform(gray)
