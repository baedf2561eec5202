"""Perturbation budgets shared by the attack plugins: per-pixel scaling, clipping a result to a
norm ball, a validator for budget lists, and the minimal-perturbation attacks' ``run`` and
``run_budgets`` (one unbounded run clipped to every budget of a grid).

Budgets are given per pixel value so one number fits any image size: an L2 budget ``e`` means
``e * sqrt(D)`` and an L1 budget ``e * D`` for D = C*H*W values (L∞ budgets are per value
already), as foolbox 1.8's normalised distances did for the paper.

A minimal-perturbation attack (DeepFool, CW, ...) with ``max_norm`` set behaves like foolbox's
``MinimizationAttack`` called with an epsilon: the unbounded result is clipped to the ball and
rows that are then no longer adversarial stay failed (the core re-checks every row). A budget
grid is the core's: it hands the whole grid to ``run_budgets``, which runs the attack once,
unbounded, and clips that run to each budget (an on-disk memo did this before plugin API 1.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from advbench.plugin import AttackOutput, AttackSpec, Params


def positive_budgets(values: list[float]) -> list[float]:
    """Validator of a budget list (used with ``Field(min_length=1)``: an empty list used to crash
    inside eagerpy, and a negative budget to "succeed")."""
    bad = [v for v in values if not v > 0]
    if bad:
        raise ValueError(f"every budget must be > 0, found {', '.join(map(str, bad))}")
    return values


MAX_NORM_HELP = ("Largest perturbation kept, per pixel value (L2: times sqrt(D)); rows beyond it are "
                 "clipped to the ball and fail if no longer adversarial. None: unbounded.")


def norm_scale(norm: str, images: torch.Tensor) -> float:
    """Factor turning a per-pixel budget into the absolute ``norm`` radius for these images."""
    d = images[0].numel()
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


def clip_to_ball(clean: torch.Tensor, adversarial: torch.Tensor, norm: str, radius: float) -> torch.Tensor:
    """Each row's perturbation shrunk into the ``norm`` ball of ``radius`` (L∞: clamped per value;
    L2/L1: scaled down, never up), as foolbox's ``LpDistance.clip_perturbation``."""
    delta = adversarial - clean
    if norm == "linf":
        return (clean + delta.clamp(-radius, radius)).clamp(0, 1)
    p = {"l2": 2, "l1": 1}[norm]
    size = delta.flatten(1).norm(p=p, dim=1).clamp_min(1e-12)
    factor = (radius / size).clamp(max=1.0).view(-1, *([1] * (clean.dim() - 1)))
    return (clean + delta * factor).clamp(0, 1)


def _unbounded_images(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(out, AttackOutput):
        return out.images, {k: torch.as_tensor(v) for k, v in out.per_image.items()}
    return out, {}


def _clipped(images: torch.Tensor, adversarial: torch.Tensor, per_image: dict[str, torch.Tensor], norm: str,
             budget: float) -> Any:
    clipped = clip_to_ball(images, adversarial, norm, budget * norm_scale(norm, images))
    return AttackOutput(clipped, per_image) if per_image else clipped


def minimal_norm(norm: str, unbounded: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` of a minimal-perturbation attack with ``max_norm``: ``unbounded(model, images,
    criterion, params, ctx)`` returns a tensor or an :class:`AttackOutput`. Without ``max_norm``
    that is the result; with it, the result clipped to ``max_norm`` (per pixel)."""

    def run(model, images, criterion, params, ctx):
        if params.max_norm is None:
            return unbounded(model, images, criterion, params, ctx)
        adversarial, per_image = _unbounded_images(unbounded(model, images, criterion, params, ctx))
        return _clipped(images, adversarial, per_image, norm, params.max_norm)

    return run


def minimal_norm_budgets(norm: str, unbounded: Callable[..., Any]) -> Callable[..., Any]:
    """``run_budgets`` of a minimal-perturbation attack: one unbounded run (it does not depend on
    ``max_norm``), clipped to each budget's ball. Each result is what ``run`` gives for that
    budget alone, from the same random state."""

    def run_budgets(model, images, criterion, params, budgets, ctx):
        adversarial, per_image = _unbounded_images(unbounded(model, images, criterion, params, ctx))
        return [_clipped(images, adversarial, per_image, norm, budget) for budget in budgets]

    return run_budgets


def minimal_norm_spec(*, name: str, summary: str, params: type[Params], unbounded: Callable[..., Any], norm: str,
                      version: str = "1", **fields: Any) -> AttackSpec:
    """The :class:`AttackSpec` of a minimal-perturbation attack whose ``params`` have ``max_norm``
    (its budget): ``run`` is :func:`minimal_norm` over ``unbounded``, ``run_budgets``
    :func:`minimal_norm_budgets`."""
    return AttackSpec(name=name, summary=summary, params=params, version=version, budget_param="max_norm", norm=norm,
                      run=minimal_norm(norm, unbounded), run_budgets=minimal_norm_budgets(norm, unbounded), **fields)
