"""Operations as differentiable batch functions, for attacks that know the defense.

An operation whose tensor backend has useful gradients is used as it is; one without (JPEG) is
replaced, on the backward pass only, by the identity: the straight-through estimator of BPDA
(Athalye, Carlini, Wagner, ICML 2018), which needs the output to keep the input's size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from advbench.errors import PluginError
from advbench.specs import TransformSpec


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            return fn(x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def straight_through(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` forward, the identity backward (BPDA). ``fn`` must keep the batch's shape."""
    def op(x: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(x, fn)
    return op


def differentiable_operation(spec: TransformSpec, params: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform as a differentiable function of a float (N, 3, H, W) batch in [0, 1]."""
    if spec.apply_tensor is None:
        raise PluginError(f"transform {spec.name!r} has no tensor backend (apply_tensor), so an adaptive attack "
                          f"cannot apply it to a batch; give it one or leave its group out of the target")
    apply = spec.apply_tensor

    def forward(x: torch.Tensor) -> torch.Tensor:
        return apply(x, params)

    if spec.differentiable:
        return forward

    def checked(x: torch.Tensor) -> torch.Tensor:
        y = forward(x)
        if y.shape != x.shape:
            raise PluginError(f"transform {spec.name!r} is not differentiable and changes the image size, so no "
                              f"straight-through gradient exists; mark it differentiable or drop it from the target")
        return y

    return straight_through(checked)
