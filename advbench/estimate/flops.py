"""Counting a network's FLOPs and operators with ``torch.utils.flop_counter.FlopCounterMode``,
on a copy on the ``meta`` device (shapes only, no arithmetic)."""

from __future__ import annotations

import copy
from typing import Any

Shape = tuple[int, int, int]  # (C, H, W)


def count_flops(module: Any, shape: Shape, batch: int, *, training: bool = False) -> tuple[float, float, tuple[int, int]]:
    """(forward FLOPs, backward FLOPs) per image and the operators (forward, backward) one batch
    launches, counted with ``FlopCounterMode`` on one batch of ``batch`` images of ``shape``.

    A frozen classifier (``training=False``) is differentiated with respect to its input only,
    as attacks do; a network in training with respect to its weights too. The count runs on a
    copy on the ``meta`` device (shapes only, no arithmetic); a network that cannot run there is
    counted on one real image (FLOPs are linear in the batch)."""
    try:
        return _count(copy.deepcopy(module).to("meta"), shape, batch, "meta", training)
    except (NotImplementedError, RuntimeError):
        # on one image: its operators are a batch's too (launches do not grow with the batch)
        return _count(copy.deepcopy(module), shape, 1, "cpu", training)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution (input, weights) costs what its forward pass does. torch's
    own formula (2.x) counts the weight gradient of a grouped convolution as a dense one, which
    made Xception's (depthwise) training pass 10x its forward pass."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _count(module: Any, shape: tuple[int, int, int], batch: int, device: str, training: bool):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Operators(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:  # views launch no kernel
                self.count += 1
            return func(*args, **(kwargs or {}))

    module.train(training)
    for p in module.parameters():
        p.requires_grad_(training)
    x = torch.zeros((batch, *shape), device=device, requires_grad=not training)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as forward_flops, Operators() as forward_ops:
        out = module(x)
    with FlopCounterMode(display=False, custom_mapping=mapping) as backward_flops, Operators() as backward_ops:
        out.float().sum().backward()
    return (forward_flops.get_total_flops() / batch, backward_flops.get_total_flops() / batch,
            (forward_ops.count, backward_ops.count))


def meta_copy(module: Any) -> Any:
    """A copy of ``module`` on the meta device, or None where it cannot move there."""
    try:
        return copy.deepcopy(module).to("meta")
    except (NotImplementedError, RuntimeError):
        return None


def flops_ratio(meta: Any, shape: Shape, out_shape: Shape, forward_flops: float) -> float:
    """FLOPs of a forward pass at ``out_shape`` (a scaled image) relative to ``forward_flops``,
    those at ``shape``; ``meta``: the network on the meta device (:func:`meta_copy`), or None."""
    if out_shape == shape or forward_flops <= 0 or meta is None:
        return 1.0
    try:
        return _count(meta, out_shape, 1, "meta", False)[0] / forward_flops
    except (NotImplementedError, RuntimeError):  # a network that takes one size only fails there too
        return 1.0
