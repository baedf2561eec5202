"""Perturbation budgets shared by the attack plugins: per-pixel scaling, clipping a result to a
norm ball, a validator for budget lists, and the on-disk memo that lets a grid of budgets reuse one
unbounded run of a minimal-perturbation attack.

Budgets are given per pixel value so one number fits any image size: an L2 budget ``e`` means
``e * sqrt(D)`` and an L1 budget ``e * D`` for D = C*H*W values (L∞ budgets are per value
already), as foolbox 1.8's normalised distances did for the paper.

A minimal-perturbation attack (DeepFool, CW, ...) with ``max_norm`` set behaves like foolbox's
``MinimizationAttack`` called with an epsilon: the unbounded result is clipped to the ball and
rows that are then no longer adversarial stay failed (the core re-checks every row). The
benchmark's grid mode calls the attack once per budget, so the unbounded run is memoised in
``ctx.cache_dir``: the first budget runs the attack, the others load it.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from advbench.specs import AttackOutput, AttackSpec, Params
from advbench.verified import discard, file_state, verified_file


def positive_budgets(values: list[float]) -> list[float]:
    """Validator of a budget list (used with ``Field(min_length=1)``: an empty list used to crash
    inside eagerpy, and a negative budget to "succeed")."""
    bad = [v for v in values if not v > 0]
    if bad:
        raise ValueError(f"every budget must be > 0, found {', '.join(map(str, bad))}")
    return values


MAX_NORM_HELP = ("Largest perturbation kept, per pixel value (L2: times sqrt(D)); rows beyond it are "
                 "clipped to the ball and fail if no longer adversarial. None: unbounded.")

#: bump when the memo's file layout changes
MEMO_FORMAT = "1"


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


# --- keys ---------------------------------------------------------------------------------------

_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the model's class, parameters and buffers; recomputed only when a tensor changed
    (``_version`` counts in-place writes), since the attack cache is shared by every model."""
    tensors = list(model.state_dict(keep_vars=True).values())
    stamp = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)
    known = _fingerprints.get(model)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.sha256(type(model).__qualname__.encode())
    for t in tensors:
        h.update(_tensor_bytes(t.detach()))
    digest = h.hexdigest()
    _fingerprints[model] = (stamp, digest)
    return digest


def _tensor_bytes(t: torch.Tensor | None) -> bytes:
    if t is None:
        return b"none"
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    return f"{t.dtype}{tuple(t.shape)}".encode() + raw.numpy().tobytes()


def memo_key(attack: str, version: str, model: torch.nn.Module, images: torch.Tensor, criterion: Any,
             params: Mapping[str, Any], seed: int) -> str:
    """Everything the unbounded run depends on: attack and version, model, batch bytes, the
    criterion (labels, targets and its rule), the parameters other than ``max_norm``, the seed."""
    h = hashlib.sha256()
    rule = {k: getattr(criterion, k, None) for k in ("targeted", "k", "threshold")}
    head = {"format": MEMO_FORMAT, "attack": attack, "version": version, "seed": seed, "rule": rule,
            "params": {k: v for k, v in params.items() if k != "max_norm"}}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(model_fingerprint(model).encode())
    for t in (images, getattr(criterion, "labels", None), getattr(criterion, "targets", None)):
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# --- the memo ------------------------------------------------------------------------------------


def _load(path: Path, device: torch.device) -> dict[str, torch.Tensor] | None:
    if not file_state(path).ok:  # missing, or damaged: recomputed (and rewritten), never trusted
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return {k: v.to(device) for k, v in stored.items()}


Unbounded = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def memoised(attack: str, version: str, model, images: torch.Tensor, criterion, params, ctx,
             unbounded: Unbounded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The unbounded run's (images, per-image values), loaded from ``ctx.cache_dir`` when a run
    with the same key is there, else computed and stored there."""
    key = memo_key(attack, version, model, images, criterion, params.model_dump(), ctx.seed)
    path = Path(ctx.cache_dir) / "unbounded" / f"{attack}-{key[:40]}.pt"
    stored = _load(path, images.device)
    if stored is not None and stored["images"].shape == images.shape:
        adversarial = stored.pop("images")
        return adversarial, stored
    adversarial, per_image = unbounded()
    tensors = {k: v.detach().cpu() for k, v in {"images": adversarial, **per_image}.items()}
    if stored is not None:  # intact but of another shape: replaced
        discard(path)
    verified_file(path, lambda tmp: torch.save(tensors, tmp), what=f"the {attack} memo")
    return adversarial, per_image


def minimal_norm(attack: str, version: str, norm: str,
                 unbounded: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` of a minimal-perturbation attack with ``max_norm``: ``unbounded(model, images,
    criterion, params, ctx)`` returns a tensor or an :class:`AttackOutput`. Without ``max_norm``
    that is the result; with it, the unbounded run is memoised (the grid mode's other budgets
    load it, see :func:`memoised`) and clipped to ``max_norm`` (per pixel)."""

    def run(model, images, criterion, params, ctx):
        if params.max_norm is None:
            return unbounded(model, images, criterion, params, ctx)

        def compute():
            out = unbounded(model, images, criterion, params, ctx)
            if isinstance(out, AttackOutput):
                return out.images, {k: torch.as_tensor(v) for k, v in out.per_image.items()}
            return out, {}

        adversarial, per_image = memoised(attack, version, model, images, criterion, params, ctx, compute)
        adversarial = clip_to_ball(images, adversarial, norm, params.max_norm * norm_scale(norm, images))
        return AttackOutput(adversarial, per_image) if per_image else adversarial

    return run



def minimal_norm_spec(*, name: str, summary: str, params: type[Params], unbounded: Callable[..., Any], norm: str,
                      version: str = "1", **fields: Any) -> AttackSpec:
    """The :class:`AttackSpec` of a minimal-perturbation attack whose ``params`` have ``max_norm``
    (its budget): ``run`` is :func:`minimal_norm` over ``unbounded``, keyed by this name and version."""
    return AttackSpec(name=name, summary=summary, params=params, version=version, budget_param="max_norm", norm=norm,
                      run=minimal_norm(name, version, norm, unbounded), **fields)
