"""Differentiable image operations for adaptive attacks.

An adaptive attack differentiates through the defense's image operations. An operation whose
tensor backend has useful gradients (``TransformSpec.differentiable``) is used as it is; one
that has none (JPEG: rounding and quantisation) gets the gradient of a stand-in on the backward
pass, the Backward Pass Differentiable Approximation (BPDA) of Athalye, Carlini & Wagner,
"Obfuscated gradients give a false sense of security", ICML 2018. Its simplest form, the
straight-through estimator (forward ``f(x)``, backward identity), fits an operation that keeps
the image close to its input and its size unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from advbench.errors import PluginError
from advbench.specs import TransformSpec

BatchOp = Callable[[torch.Tensor], torch.Tensor]


class _BPDA(torch.autograd.Function):
    """Forward: ``forward_fn(x)`` exactly. Backward: the vector-Jacobian product of ``approx``
    at ``x`` (``approx=None``: the identity, i.e. the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, forward_fn, approx, name):
        with torch.no_grad():
            out = forward_fn(x.detach())
        if approx is None and out.shape != x.shape:
            raise PluginError(f"transform {name!r}: a straight-through gradient needs an output of the input's size "
                              f"{tuple(x.shape)}, got {tuple(out.shape)}")
        ctx.approx = approx
        ctx.save_for_backward(x)
        return out.to(dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.approx is None:
            return grad_out, None, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.approx(leaf), leaf, grad_out)
        return grad, None, None, None


def bpda(forward_fn: BatchOp, approx: BatchOp | None = None, name: str = "operation") -> BatchOp:
    """``forward_fn`` with the gradient of ``approx`` (a differentiable function of the same
    output shape) on the backward pass; ``approx=None`` is the straight-through estimator
    (backward = identity, so the output must keep the input's size). Athalye et al. 2018, §4.1."""
    return lambda x: _BPDA.apply(x, forward_fn, approx, name)


def straight_through(forward_fn: BatchOp, name: str = "operation") -> BatchOp:
    """``forward_fn`` on the forward pass, the identity on the backward pass (BPDA with g(x) = x)."""
    return bpda(forward_fn, None, name)


# A small grey batch to learn, before any attack runs, whether an operation keeps the size.
_PROBE_SHAPE = (1, 3, 32, 32)


def differentiable_operation(spec: TransformSpec, params: Any) -> BatchOp:
    """The batch operation ``x -> spec.apply_tensor(x, params)`` with gradients an attack can use.

    ``spec.differentiable``: ``apply_tensor`` itself. Otherwise a straight-through estimator
    around it (forward ``apply_tensor(x)``, backward identity), which needs an operation that
    keeps the image size; an operation that changes it, or a spec without a tensor backend, is a
    :class:`PluginError` naming the transform.
    """
    if spec.apply_tensor is None:
        raise PluginError(f"transform {spec.name!r} has no tensor backend (apply_tensor), so adaptive attacks cannot "
                          "differentiate through it; give it apply_tensor or leave it out of the targeted group")
    apply_tensor = spec.apply_tensor

    def op(x: torch.Tensor) -> torch.Tensor:
        return apply_tensor(x, params)

    if spec.differentiable:
        return op
    with torch.no_grad():
        probe = torch.full(_PROBE_SHAPE, 0.5)
        out_shape = tuple(apply_tensor(probe, params).shape)
    if out_shape != _PROBE_SHAPE:
        raise PluginError(f"transform {spec.name!r} is not differentiable and changes the image size "
                          f"({_PROBE_SHAPE[2:]} -> {out_shape[2:]}), so no straight-through gradient fits it; "
                          "set differentiable=True if apply_tensor has gradients, or give it a differentiable apply_tensor")
    return straight_through(op, spec.name)
