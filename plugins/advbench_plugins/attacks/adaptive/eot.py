"""EOT-PGD against an image-operation defense: one adversarial label under every operation.

The detectors of Nguyen et al. (2019) flag an image whose top-1 label changes under image
operations (JPEG, blur, rotation, scaling), and their corrector votes over those labels. An
attacker who knows the operations optimises the expectation of the attack loss over them,
Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018; Athalye, Carlini &
Wagner, ICML 2018, §4.3), with a straight-through estimator (BPDA) in place of JPEG's missing
gradient (``advbench.differentiable``). The image then keeps one adversarial label under every
operation: the counting/difference features look like a normal image's and voting restores
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from advbench.plugin import Criterion

from advbench_plugins.attacks.adaptive.common import (
    adversarial_labels,
    ascent_direction,
    classifier_loss,
    criterion_rows,
    first_iterate,
    label_margin,
    original_labels,
    sample_operations,
    topk_of,
    towards_label_loss,
)
from advbench_plugins.attacks.budgets import clip_to_ball, norm_scale


@dataclass(frozen=True)
class EOTResult:
    images: torch.Tensor
    steps: torch.Tensor  # (N,) gradient steps spent on each row, all restarts together
    stable: torch.Tensor  # (N,) fraction of operations keeping the image's top-1 (0 where the rule fails)


def eot_pgd(model, images: torch.Tensor, criterion: Criterion, operations: Sequence[Callable], *, norm: str,
            epsilon: float, steps: int, rel_stepsize: float, restarts: int, random_init: bool, eot_samples: int,
            loss: str, confidence: float, gen: torch.Generator,
            storage: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
            start: torch.Tensor | None = None, check_every: int = 1) -> EOTResult:
    """PGD (Madry et al. 2018) on the mean over the identity and the operations of a loss
    towards one adversarial label per image (the criterion's target, or the highest-ranked
    other class at the start); a non-targeted top-k rule adds a hinge on the untransformed image
    that pushes the original label out of the top-k.

    ``eot_samples = 0`` uses every operation at each step, otherwise a random subset of that many
    (the identity always). A row stops once the criterion holds on the untransformed image and
    its top-1 label holds under every operation by a logit margin of ``confidence``; per row the
    iterate kept is the best by (criterion holds, number of operations under which the label
    holds). Rows not done after ``steps`` restart from a new random point (``restarts`` runs).
    Every check and gradient is of ``storage(x)``, what the system keeps of the iterate. The
    first run starts from ``start`` when given (a warm start inside the ball). The rows are
    checked (every operation forward) every ``check_every`` steps and at the last; in between
    only the sampled operations run.
    """
    x0 = images.detach()
    n, n_ops = len(x0), len(operations)
    eps = epsilon * norm_scale(norm, x0)
    alpha = rel_stepsize * eps
    with torch.no_grad():
        adv_labels = adversarial_labels(model(x0), criterion)
    original, k = original_labels(criterion, x0.device), topk_of(criterion)
    best = x0.clone()
    best_score = torch.full((n,), -2, dtype=torch.long, device=x0.device)
    best_stable = torch.zeros(n, device=x0.device)
    steps_used = torch.zeros(n, dtype=torch.long, device=x0.device)
    done = torch.zeros(n, dtype=torch.bool, device=x0.device)
    for restart in range(restarts):
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        x = first_iterate(x0, rows, restart, start, random_init, norm, eps, gen)
        for t in range(steps + 1):
            sampled = set(sample_operations(n_ops, eot_samples, gen))
            check = t % check_every == 0 or t == steps
            with torch.enable_grad():  # callers may hold a no_grad context
                x = x.detach().requires_grad_(True)
                seen = storage(x)
                logits = model(seen)
                top1 = logits.argmax(1).detach()
                objective = classifier_loss(logits, adv_labels[rows], None if original is None else original[rows],
                                            k, loss, confidence)
                holds = torch.ones(len(rows), n_ops, dtype=torch.bool, device=x.device)
                for j, op in enumerate(operations):
                    if j in sampled:
                        op_logits = model(op(seen))
                        objective = objective + towards_label_loss(op_logits, adv_labels[rows], loss, confidence)
                    elif not check:
                        continue
                    else:
                        with torch.no_grad():
                            op_logits = model(op(seen.detach()))
                    holds[:, j] = (op_logits.argmax(1) == top1) & (label_margin(op_logits.detach(), top1) >= confidence)
                success = criterion_rows(criterion, logits.detach(), rows, n) & check
                score = torch.where(success, holds.sum(1), torch.full_like(top1, -1))
                better = (score > best_score[rows]) & check
                best[rows[better]] = x.detach()[better]
                best_score[rows[better]] = score[better]
                stable = holds.float().mean(1) if n_ops else torch.ones(len(rows), device=x.device)
                best_stable[rows[better]] = torch.where(success, stable, torch.zeros_like(stable))[better]
                finished = success & holds.all(1)
                done[rows[finished]] = True
                if t == steps or bool(finished.all()):
                    break
                (grad,) = torch.autograd.grad(objective.sum() / (1 + len(sampled)), x)
            keep = ~finished
            rows, x, grad = rows[keep], x.detach()[keep], grad[keep]
            steps_used[rows] += 1
            # gradient *descent* on the loss, projected back to the budget and the image range
            x = clip_to_ball(x0[rows], x - alpha * ascent_direction(grad, norm), norm, eps)
    return EOTResult(best, steps_used, best_stable)

