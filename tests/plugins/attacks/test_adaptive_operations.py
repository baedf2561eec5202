"""Differentiable image operations for adaptive attacks: the paper's blur/rotation/scaling
tensor backends have finite gradients, and advbench.differentiable gives JPEG a straight-through
gradient (BPDA) without changing any forward value."""

from __future__ import annotations

import pytest
import torch

from advbench.differentiable import bpda, differentiable_operation, straight_through
from advbench.errors import PluginError
from advbench.specs import TransformSpec

from advbench_plugins.transforms.paper_ops import TRANSFORMS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only contend

SPECS = {s.name: s for s in TRANSFORMS}




def batch(seed=0, shape=(2, 3, 16, 16), dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name,params", [("blur", {"kernel_size": 2}), ("rotation", {"angle": 5.0}),
                                         ("scaling", {"factor": 0.75}), ("scaling", {"factor": 1.25})])
def test_differentiable_paper_ops_have_finite_useful_gradients(name, params):
    spec = SPECS[name]
    assert spec.differentiable
    op = differentiable_operation(spec, spec.params(**params))
    x = batch().requires_grad_(True)
    out = op(x)
    assert torch.equal(out.detach(), spec.apply_tensor(x.detach(), spec.params(**params)))  # forward unchanged
    (grad,) = torch.autograd.grad((out * batch(1, out.shape)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # and they are the true gradients: finite differences agree (float64, a small image)
    small = batch(2, (1, 3, 6, 6), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: spec.apply_tensor(t, spec.params(**params)), (small,))


def test_jpeg_stays_non_differentiable_and_gets_a_straight_through_gradient():
    spec = SPECS["jpeg"]
    assert not spec.differentiable
    params = spec.params(quality=50)
    op = differentiable_operation(spec, params)
    x = batch().requires_grad_(True)
    out = op(x)
    assert torch.equal(out.detach(), spec.apply_tensor(x.detach(), params))  # the real JPEG forward
    weights = batch(3)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.equal(grad, weights)  # identity backward


def test_a_size_changing_operation_without_gradients_is_a_plugin_error():
    spec = TransformSpec(name="shrink", summary="", apply=lambda im, p: im,
                         apply_tensor=lambda b, p: b[..., ::2, ::2].round())
    with pytest.raises(PluginError, match="'shrink'.*changes the image size"):
        differentiable_operation(spec, spec.params())
    missing = TransformSpec(name="pil-only", summary="", apply=lambda im, p: im)
    with pytest.raises(PluginError, match="'pil-only' has no tensor backend"):
        differentiable_operation(missing, missing.params())


def test_bpda_uses_the_approximation_gradient_and_the_exact_forward():
    x = batch().requires_grad_(True)
    op = bpda(lambda t: (t * 255).round() / 255, approx=lambda t: 2 * t)
    out = op(x)
    assert torch.equal(out.detach(), (x.detach() * 255).round() / 255)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(grad, torch.full_like(x, 2.0))
    with pytest.raises(PluginError, match="input's size"):
        straight_through(lambda t: t[..., :8, :8], "crop")(x)
