"""White-box attacks on a classifier and a differentiable detector together.

- ``cw-joint``: the combined loss of Carlini & Wagner, "Adversarial examples are not easily
  detected: bypassing ten detection methods" (AISec 2017, §3): the classifier loss plus
  ``c * max(score - threshold + margin, 0)``, minimised by PGD, with ``c`` searched per image
  between rounds as Carlini & Wagner search their constant.
- ``opgd``: Orthogonal Projected Gradient Descent of Bryniarski, Hingun, Pachuca, Wang &
  Carlini, "Evading adversarial example detection defenses with orthogonal projected gradient
  descent" (ICLR 2022, §4). Summing two losses lets the larger gradient win and the iterate
  oscillate between "misclassified" and "undetected". OPGD instead takes one objective per
  step: while the image is not yet adversarial, the classifier-loss gradient projected
  orthogonally to the detector-score gradient (so the step does not, to first order, raise the
  score); once adversarial but still detected, the detector-score gradient projected
  orthogonally to the classifier-loss gradient (so it does not undo the misclassification).
  Their "selective" variant (§4.2) takes the same two gradients without projecting them.
  For L∞ the step is the sign of the projected gradient, as in the authors' code; by default
  (``linf_step="orthogonal-sign"``) that sign is projected once more, since the sign alone is
  not orthogonal to the other gradient (see :func:`_orthogonal_sign`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from advbench.plugin import Criterion

from advbench_plugins.attacks.adaptive.common import (
    adversarial_labels,
    ascent_direction,
    classifier_loss,
    criterion_rows,
    first_iterate,
    original_labels,
    rowwise,
    rule_margin,
    topk_of,
)
from advbench_plugins.attacks.budgets import clip_to_ball, norm_scale



@dataclass(frozen=True)
class JointResult:
    images: torch.Tensor
    steps: torch.Tensor  # (N,) gradient steps spent on each row
    scores: torch.Tensor  # (N,) detector score of the returned image
    const: torch.Tensor  # (N,) final constant c of cw (the initial one for the other methods)


def _orthogonal(g: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """``g`` minus its projection on ``against``, per row (flattened)."""
    gf, af = g.flatten(1), against.flatten(1)
    coef = (gf * af).sum(1) / (af * af).sum(1).clamp_min(1e-20)
    return (gf - coef[:, None] * af).view_as(g)


def _orthogonal_sign(sign: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """An L∞ step that keeps the orthogonality: the sign of a projected gradient is no longer
    orthogonal to ``against`` (on the tiny world each detector step then raised the classifier
    loss by about as much as the previous classifier step lowered it, and the iterate
    oscillated), so it is projected once more and rescaled to unit L∞ norm."""
    step = _orthogonal(sign, against)
    return step / rowwise(step.flatten(1).abs().amax(1).clamp_min(1e-12), step)


def joint_attack(model, images: torch.Tensor, criterion: Criterion, scores_fn: Callable[[torch.Tensor], torch.Tensor],
                 threshold: float, *, method: str, norm: str, epsilon: float, steps: int, rel_stepsize: float,
                 rounds: int, random_init: bool, loss: str, confidence: float, detector_margin: float,
                 const: float, gen: torch.Generator, linf_step: str = "orthogonal-sign",
                 storage: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                 start: torch.Tensor | None = None) -> JointResult:
    """Minimise the classifier loss (towards one adversarial label per image) and the detector
    score ``scores_fn`` within an ``epsilon`` ball, by ``method`` (see the module docstring).

    A row stops at the first iterate that satisfies the criterion with a score at most
    ``threshold - detector_margin`` (not flagged, with room for rounding to 8 bits). Rows not
    done after ``steps`` start a new round from a new random point; for ``cw`` the round also
    updates the row's constant: ×10 if it was misclassified in the last round (but always
    flagged then), ÷10 if it never was. Per row the image returned is the first success, else the
    misclassified iterate of lowest score, else the iterate (or the clean image) of lowest score.
    Every check and gradient is of ``storage(x)``, what the system keeps of the iterate. The
    first round starts from ``start`` when given (a warm start inside the ball).
    """
    x0 = images.detach()
    n = len(x0)
    eps = epsilon * norm_scale(norm, x0)
    alpha = rel_stepsize * eps
    limit = threshold - detector_margin
    with torch.no_grad():
        adv_labels = adversarial_labels(model(x0), criterion)
        best_scores = scores_fn(x0).view(-1).float()
    original, k = original_labels(criterion, x0.device), topk_of(criterion)
    best = x0.clone()
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x0.device)
    fooled_last_round = torch.zeros(n, dtype=torch.bool, device=x0.device)
    done = torch.zeros(n, dtype=torch.bool, device=x0.device)
    steps_used = torch.zeros(n, dtype=torch.long, device=x0.device)
    c = torch.full((n,), float(const), device=x0.device)
    for round_ in range(rounds):
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        if method == "cw" and round_ > 0:
            c[rows] = torch.where(fooled_last_round[rows], c[rows] * 10, c[rows] / 10)
        fooled_this_round = torch.zeros(n, dtype=torch.bool, device=x0.device)
        x = first_iterate(x0, rows, round_, start, random_init, norm, eps, gen)
        for t in range(steps + 1):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                seen = storage(x)
                logits = model(seen)
                score = scores_fn(seen).view(-1)
                fooled = criterion_rows(criterion, logits.detach(), rows, n)
                s = score.detach().float()
                success = fooled & (s <= limit)
                fooled_this_round[rows[fooled]] = True
                # keep: a success, else the misclassified iterate of lowest score
                better = ~done[rows] & ((fooled & ~best_fooled[rows]) |
                                        ((fooled == best_fooled[rows]) & (s < best_scores[rows])) | success)
                best[rows[better]] = x.detach()[better]
                best_scores[rows[better]] = s[better]
                best_fooled[rows[better]] = fooled[better]
                done[rows[success]] = True
                if t == steps or bool(success.all()):
                    break
                cls = classifier_loss(logits, adv_labels[rows], None if original is None else original[rows], k, loss,
                                      confidence if method == "cw" else None)
                if method == "cw":
                    objective = cls + c[rows] * (score - limit).clamp_min(0)
                    (grad,) = torch.autograd.grad(objective.sum(), x)
                    direction = ascent_direction(grad, norm)
                else:
                    g_cls = torch.autograd.grad(cls.sum(), x, retain_graph=True)[0]
                    g_det = torch.autograd.grad(score.sum(), x)[0]
                    # past the rule by a margin before the detector's turn (as Bryniarski et al.'s
                    # code): right at the boundary a detector step undoes the misclassification
                    past = fooled & (rule_margin(logits.detach(), adv_labels[rows], None if original is None
                                                 else original[rows], k) >= confidence)
                    own, other = torch.where(rowwise(past, x), g_det, g_cls), torch.where(rowwise(past, x), g_cls, g_det)
                    if method == "orthogonal":
                        own = _orthogonal(own, other)
                    direction = ascent_direction(own, norm)
                    if method == "orthogonal" and norm == "linf" and linf_step == "orthogonal-sign":
                        direction = _orthogonal_sign(direction, other)
            keep = ~success
            rows, x, direction = rows[keep], x.detach()[keep], direction[keep]
            steps_used[rows] += 1
            x = clip_to_ball(x0[rows], x - alpha * direction, norm, eps)
        fooled_last_round = fooled_this_round
    return JointResult(best, steps_used, best_scores, c)
