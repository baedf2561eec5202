"""A feature-level attack on the operation-based detectors: the whole top-k ranking survives.

The counting and differences features of Nguyen et al. (2019, §3.2) compare, position by
position, the top-k labels of an image under each operation with its own top-k. EOT-PGD
(:mod:`.eot`) only makes the *top-1* label hold under the operations; positions 2..k still move,
and those moves are what the features read. This attack optimises a differentiable surrogate of
the features themselves: under every sampled operation, the untransformed image's ranking
``r_1 > r_2 > ... > r_k > (every other class)`` must hold by a logit margin, a sum of pairwise
hinges ``max(0, m - (z[r_j] - z[r_j+1]))`` that is zero exactly when each operation's top-k list
equals the untransformed one (all differences 0, every count n: the features of the most stable
normal image). The same margins on the untransformed image keep its ranking clear of ties
through the save and the Pillow operations. The ranking is re-read from the untransformed
logits at every step, so it follows the iterate while the success rule is being reached.

``ranking_loss = "kl"`` instead matches each operation's softmax to the untransformed one's,
``KL(p(x) || p(op(x)))`` with ``p(x)`` held fixed (the "independent reference" of
docs/threat-models.md: targeted, with the towards-label loss under every sampled operation).

Gradients through JPEG are BPDA's straight-through estimate (the defense's operations carry it),
and every check and gradient is of ``storage(x)``, what the system keeps (Athalye, Carlini &
Wagner 2018; Athalye, Engstrom, Ilyas & Kwok 2018 for EOT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advbench.plugin import Criterion

from advbench_plugins.attacks.adaptive.common import (
    adversarial_labels,
    ascent_direction,
    classifier_loss,
    criterion_rows,
    first_iterate,
    original_labels,
    sample_operations,
    topk_of,
    towards_label_loss,
)
from advbench_plugins.attacks.budgets import clip_to_ball, norm_scale

Decision = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RankResult:
    images: torch.Tensor
    steps: torch.Tensor  # (N,) gradient steps spent on each row, all restarts together
    evaded: torch.Tensor  # (N,) 1 where the last check found the row adversarial against the whole system


def ranking_hinge(logits: torch.Tensor, ranking: torch.Tensor, margin: float) -> torch.Tensor:
    """Per row, zero iff ``ranking`` (N, k) is the top-k of ``logits`` in that order, each class
    ahead of the next (and the k-th ahead of every other class) by ``margin``: the sum of the
    k hinges ``max(0, margin - gap)``."""
    ranked = logits.gather(1, ranking)
    gaps = ranked[:, :-1] - ranked[:, 1:]
    rest = logits.scatter(1, ranking, float("-inf")).amax(1)
    return F.relu(margin - gaps).sum(1) + F.relu(margin - (ranked[:, -1] - rest))


def softmax_kl(anchor: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per row ``KL(softmax(anchor) || softmax(logits))``, the anchor held fixed."""
    p = F.log_softmax(anchor.detach(), 1)
    return (p.exp() * (p - F.log_softmax(logits, 1))).sum(1)


def ranking_kept(model, operations: Sequence[Callable], x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) True where every operation leaves the top-k list of ``x`` (order included) unchanged."""
    with torch.no_grad():
        ranking = model(x).topk(k, 1).indices
        return torch.stack([(model(op(x)).topk(k, 1).indices == ranking).all(1) for op in operations], 1).all(1) \
            if operations else torch.ones(len(x), dtype=torch.bool, device=x.device)


def random_labels(logits: torch.Tensor, criterion: Criterion, gen: torch.Generator) -> torch.Tensor:
    """A seeded uniform target per row among the classes other than the original label (the
    criterion's target under a targeted rule)."""
    if criterion.targeted:
        return criterion.targets.to(logits.device).long()
    labels = criterion.labels.to(logits.device).long()
    offset = torch.randint(1, logits.shape[1], (len(labels),), generator=gen).to(logits.device)
    return (labels + offset) % logits.shape[1]


def rank_eot(model, images: torch.Tensor, criterion: Criterion, operations: Sequence[Callable], *, norm: str,
             epsilon: float, steps: int, rel_stepsize: float, restarts: int, random_init: bool, eot_samples: int,
             loss: str, confidence: float, k: int, ranking_loss: str, rank_margin: float, kl_weight: float,
             op_label_loss: bool, adversarial_label: str, check_every: int, gen: torch.Generator,
             decide: Decision | None = None, storage: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
             start: torch.Tensor | None = None) -> RankResult:
    """PGD (Madry et al. 2018) on the classifier loss of the untransformed image (towards one
    adversarial label, plus the rule's top-k hinge) and, over ``eot_samples`` operations sampled
    per step (0: all), the ranking surrogate (see the module docstring): the hinges, averaged over
    the operations, once the rule holds on the row; or ``kl_weight`` times the KL term of each
    operation; and with ``op_label_loss`` the towards-label loss under each of them (EOT).

    Every ``check_every`` steps (and at the last) the rows are judged: by ``decide(x, rows)``
    (the defended system's decision) when given, else by the rule holding and every operation
    keeping the top-k list; a row judged adversarial stops there. The image returned per row is
    that one, else the last checked iterate on which the rule held, else the last iterate. Rows
    not done after ``steps`` restart from a random point (``restarts`` runs); the first run starts
    from ``start`` when given (a warm start inside the ball).
    """
    x0 = images.detach()
    n, n_ops = len(x0), len(operations)
    eps = epsilon * norm_scale(norm, x0)
    alpha = rel_stepsize * eps
    with torch.no_grad():
        clean_logits = model(storage(x0))
    adv_labels = random_labels(clean_logits, criterion, gen) if adversarial_label == "random" \
        else adversarial_labels(clean_logits, criterion)
    original, rule_k = original_labels(criterion, x0.device), topk_of(criterion)
    k = max(1, min(k, clean_logits.shape[1] - 1))
    best = x0.clone()
    best_rank = torch.zeros(n, dtype=torch.long, device=x0.device)  # 2: evaded, 1: the rule held, 0: neither
    steps_used = torch.zeros(n, dtype=torch.long, device=x0.device)
    done = torch.zeros(n, dtype=torch.bool, device=x0.device)

    def judge(seen: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        holds = criterion_rows(criterion, logits, rows, n)
        if decide is not None:
            return holds, decide(seen, rows) & holds
        return holds, holds & ranking_kept(model, operations, seen, k)

    for restart in range(restarts):
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        x = first_iterate(x0, rows, restart, start, random_init, norm, eps, gen)
        for t in range(steps + 1):
            sampled = sample_operations(n_ops, eot_samples, gen)
            with torch.enable_grad():  # callers may hold a no_grad context
                x = x.detach().requires_grad_(True)
                seen = storage(x)
                logits = model(seen)
                if t % check_every == 0 or t == steps:
                    holds, evaded = judge(seen.detach(), logits.detach(), rows)
                    rank = evaded.long() + holds.long().clamp(max=1)
                    better = rank >= best_rank[rows].clamp(max=1)  # the latest of equal rank: more optimised
                    best[rows[better]] = x.detach()[better]
                    best_rank[rows[better]] = rank[better]
                    done[rows[evaded]] = True
                else:
                    evaded = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
                if t == steps or bool(evaded.all()):
                    break
                ranking = logits.detach().topk(k, 1).indices
                objective = classifier_loss(logits, adv_labels[rows], None if original is None else original[rows],
                                            rule_k, loss, confidence)
                hinges = ranking_hinge(logits, ranking, rank_margin) if ranking_loss == "hinge" else 0.0
                for j in sampled:
                    op_logits = model(operations[j](seen))
                    if op_label_loss:
                        objective = objective + towards_label_loss(op_logits, adv_labels[rows], loss, confidence)
                    if ranking_loss == "hinge":
                        hinges = hinges + ranking_hinge(op_logits, ranking, rank_margin)
                    else:
                        objective = objective + kl_weight * softmax_kl(logits, op_logits)
                if ranking_loss == "hinge":
                    # once the rule holds (before, the ranking kept would be the clean one, which the
                    # rule must break), averaged over the operations: one term beside the rule's
                    holds_now = criterion_rows(criterion, logits.detach(), rows, n).float()
                    objective = objective + holds_now * hinges / max(1, len(sampled))
                (grad,) = torch.autograd.grad(objective.sum(), x)
            keep = ~evaded
            rows, x, grad = rows[keep], x.detach()[keep], grad[keep]
            steps_used[rows] += 1
            x = clip_to_ball(x0[rows], x - alpha * ascent_direction(grad, norm), norm, eps)
    return RankResult(best, steps_used, (best_rank == 2).float())
