"""Pieces shared by the adaptive attacks: norm balls, losses, row-wise criteria and the
defended system's decision.

Budgets are per pixel value, as for the oblivious foolbox wrappers: an L∞ budget ``e`` is ``e``,
an L2 budget ``e`` is ``e * sqrt(D)`` for D = C*H*W values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from advbench.plugin import AttackContext, Criterion, Defense, PluginError

from advbench_plugins.attacks.budgets import clip_to_ball

# --- norm balls ------------------------------------------------------------------------------


def rowwise(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm`` for a linear model with gradient ``grad``:
    its sign (L∞) or the gradient scaled to unit L2 norm."""
    if norm == "linf":
        return grad.sign()
    return grad / rowwise(l2_norms(grad).clamp_min(1e-12), grad)


def random_start(images: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A point drawn uniformly from the ``norm`` ball of radius ``eps`` around each image (L2:
    uniform in the ball, Madry et al. 2018's random start), clipped to [0, 1]."""
    shape = images.shape
    if norm == "linf":
        noise = (torch.rand(shape, generator=gen) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=gen)
        direction = direction / rowwise(l2_norms(direction).clamp_min(1e-12), direction)
        radius = torch.rand(shape[0], generator=gen) ** (1.0 / images[0].numel()) * eps
        noise = direction * rowwise(radius, direction)
    return (images + noise.to(images.device, images.dtype)).clamp(0, 1)


def first_iterate(x0: torch.Tensor, rows: torch.Tensor, run: int, start: torch.Tensor | None, random_init: bool,
                  norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    """Where run ``run`` of an iterative attack starts for ``rows``: the warm start ``start``
    (clipped into the ball) on the first run when given, else a random point of the ball
    (``random_init``), else the clean images."""
    if run == 0 and start is not None:
        return clip_to_ball(x0[rows], start.detach()[rows].to(x0), norm, eps)
    return random_start(x0[rows], eps, norm, gen) if random_init else x0[rows].clone()


def seeded_generator(ctx: AttackContext) -> torch.Generator:
    """A CPU generator seeded from the cell's seed: random draws are the same on any device."""
    return torch.Generator().manual_seed(int(ctx.seed))


def sample_operations(n_ops: int, eot_samples: int, gen: torch.Generator) -> list[int]:
    """The operations an EOT step uses: ``eot_samples`` drawn without replacement, or all of
    them (``eot_samples`` 0 or at least ``n_ops``: no draw, so the generator is not advanced)."""
    if eot_samples <= 0 or eot_samples >= n_ops:
        return list(range(n_ops))
    return torch.randperm(n_ops, generator=gen)[:eot_samples].tolist()


# --- labels, criteria and losses ----------------------------------------------------------


def topk_of(criterion: Criterion) -> int:
    """k of a non-targeted top-k rule (PaperCriterion.k), 1 for a criterion that does not say."""
    return int(getattr(criterion, "k", 1) or 1)


def adversarial_labels(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Per row, the label an attack drives every view of the image to: the target of a
    targeted criterion, else the highest-ranked class other than the original label."""
    if criterion.targeted:
        return criterion.targets.to(logits.device).long()
    labels = criterion.labels.to(logits.device).long()
    return logits.scatter(1, labels.view(-1, 1), float("-inf")).argmax(1)


def criterion_rows(criterion: Criterion, logits: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``criterion`` on logits whose row i belongs to batch row ``rows[i]`` (rows may repeat).

    A criterion is defined on the whole batch (its labels/targets are per row), so the logits
    are scattered into full (n, C) batches, one per repetition of a row.
    """
    subset = getattr(criterion, "subset", None)
    if subset is not None:
        return subset(rows.to(criterion.labels.device))(logits).to(logits.device).bool()
    rows = rows.to(logits.device)
    out = torch.zeros(len(rows), dtype=torch.bool, device=logits.device)
    # occurrence number of each row among equal rows: one scatter per occurrence
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    first = torch.searchsorted(sorted_rows, sorted_rows, right=False)
    rank = torch.empty_like(rows)
    rank[order] = torch.arange(len(rows), device=rows.device) - first
    for r in range(int(rank.max().item()) + 1 if len(rows) else 0):
        pick = (rank == r).nonzero().squeeze(1)
        full = logits.new_zeros(n, logits.shape[1])
        full[rows[pick]] = logits[pick]
        out[pick] = criterion(full).to(logits.device).bool()[rows[pick]]
    return out


def topk_margin(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """``z_label`` minus the k-th largest other logit: negative iff the label is out of the top-k."""
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    k = min(k, logits.shape[1] - 1)
    kth = others.topk(k, dim=1).values[:, -1]
    return logits.gather(1, labels.view(-1, 1)).squeeze(1) - kth


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_label`` minus the largest other logit: positive iff ``label`` is the top-1 class."""
    return topk_margin(logits, labels, 1)




def towards_label_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str, confidence: float | None) -> torch.Tensor:
    """Per row, a loss to minimise that makes ``labels`` the top-1 class: cross-entropy, or
    the Carlini-Wagner margin ``max(max_{j≠t} z_j - z_t, -confidence)`` (Carlini & Wagner 2017;
    ``confidence=None``: not clamped)."""
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    margin = -label_margin(logits, labels)
    return margin if confidence is None else margin.clamp_min(-confidence)


def classifier_loss(logits: torch.Tensor, adv: torch.Tensor, original: torch.Tensor | None, k: int, loss: str,
                    confidence: float | None) -> torch.Tensor:
    """Per row: move to the adversarial label ``adv``; for a non-targeted top-k rule
    (``original`` = the original labels) also push the original label out of the top-k, by a
    hinge that vanishes ``confidence`` past the rule. ``original=None`` for a targeted rule;
    ``confidence=None``: no hinges (the raw margins, whose gradients never vanish)."""
    value = towards_label_loss(logits, adv, loss, confidence)
    if original is not None:
        margin = topk_margin(logits, original, k)
        value = value + (margin if confidence is None else (margin + confidence).clamp_min(0))
    return value


def rule_margin(logits: torch.Tensor, adv: torch.Tensor, original: torch.Tensor | None, k: int) -> torch.Tensor:
    """How far past the success rule each row is, in logits: the original label's distance
    below the top-k (non-targeted), or the adversarial label's lead over the runner-up."""
    return label_margin(logits, adv) if original is None else -topk_margin(logits, original, k)


def original_labels(criterion: Criterion, device) -> torch.Tensor | None:
    """The original labels for :func:`classifier_loss`: None under a targeted criterion."""
    return None if criterion.targeted else criterion.labels.to(device).long()


# --- the defended system -------------------------------------------------------------------


def require_defense(name: str, ctx: AttackContext, *, operations: bool = False, scores: bool = False) -> Defense:
    """``ctx.defense`` with what attack ``name`` needs, or a one-line PluginError."""
    defense = getattr(ctx, "defense", None)
    if defense is None:
        raise PluginError(f"attack {name!r} is adaptive: it needs the defense it targets (ctx.defense); "
                          "run it as an adaptive attack against a detector or operation group")
    if operations and not defense.operations:
        raise PluginError(f"attack {name!r} needs the defense's image operations, but defense {defense.name!r} "
                          f"({defense.kind}) has none")
    if scores and defense.detector_scores is None:
        raise PluginError(f"attack {name!r} needs differentiable detector scores, but detector {defense.name!r} has "
                          "none (no torch_scores); use 'system-hsj' (label-only) against it")
    return defense


def as_bool(values, device) -> torch.Tensor:
    return torch.as_tensor(values, device=device).bool().view(-1)


def logits_in_chunks(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in x.split(batch_size)]) if len(x) else x.new_zeros(0, 0)


Decision = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seen_by_system(defense: Defense | None, params) -> Callable[[torch.Tensor], torch.Tensor]:
    """The defense's ``storage`` (save -> reload, straight-through) when the attack's
    ``through_storage`` asks for it and the defense has one, else the identity."""
    if defense is not None and defense.storage is not None and getattr(params, "through_storage", True):
        return defense.storage
    return lambda x: x


def system_decision(model, criterion: Criterion, defense: Defense | None, n: int, batch_size: int = 256,
                    storage: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Decision:
    """The defended system's verdict, ``decide(x, rows) -> bool (M,)``: True where image ``x[i]``
    (a candidate for batch row ``rows[i]``) is adversarial against the whole system: the
    criterion holds on the classifier and the defense does not undo it. A detector
    (``defense.flags``, else ``detector_scores > threshold``) undoes what it flags; with a
    corrector (``defense.correct``) a flagged image is undone only when its corrected label no
    longer satisfies the rule (without a detector every image is corrected). Only decisions are
    used: this is what a label-only attacker sees."""

    def decide(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        with torch.no_grad():
            x = storage(x)  # the system judges the stored file
        ok = criterion_rows(criterion, logits_in_chunks(model, x, batch_size), rows, n)
        if defense is None or not bool(ok.any()):
            return ok
        # the defense's own passes only for images that fool the classifier
        fooling = ok.nonzero().squeeze(1)
        candidates = x[fooling].split(batch_size)
        with torch.no_grad():
            if defense.flags is not None:
                undone = torch.cat([as_bool(defense.flags(c), x.device) for c in candidates])
            elif defense.detector_scores is not None:
                undone = torch.cat([defense.detector_scores(c).view(-1) for c in candidates]) > defense.threshold
            else:
                undone = torch.ones(len(fooling), dtype=torch.bool, device=x.device)
            if defense.correct is not None:
                corrected = torch.cat([torch.as_tensor(defense.correct(c), device=x.device).view(-1)
                                       for c in candidates]).long()
                sources = rows[fooling]
                still_wrong = (corrected == criterion.targets.to(x.device)[sources] if criterion.targeted
                               else corrected != criterion.labels.to(x.device)[sources])
                undone = undone & ~still_wrong
        ok = ok.clone()
        ok[fooling] = ~undone
        return ok

    return decide


def stable_under(model, operations: Sequence[Callable], x: torch.Tensor) -> torch.Tensor:
    """(N, n_ops) bool: the top-1 label under each operation equals the label of ``x`` itself."""
    if not operations:
        return torch.zeros(len(x), 0, dtype=torch.bool, device=x.device)
    with torch.no_grad():
        top1 = model(x).argmax(1)
        return torch.stack([model(op(x)).argmax(1) == top1 for op in operations], dim=1)
