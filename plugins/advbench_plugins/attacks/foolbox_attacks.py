"""The paper's attacks that foolbox 3 implements, under the paper's success criteria (§2.2).

Budgets are given per pixel value so one default fits any image size: an L2 budget ``e`` means
``e * sqrt(D)`` and an L1 budget ``e * D`` for D = C*H*W values (L∞ budgets are per value
already). Fast single-step attacks sweep a list of budgets and keep, per image, the smallest
that succeeds, as foolbox 1.8 (the paper's version) did. Minimal-perturbation attacks (DeepFool,
NewtonFool, CW) take ``max_norm`` (see :mod:`advbench_plugins.attacks.budgets`).
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep
import foolbox as fb
import torch
from pydantic import Field, field_validator

from advbench.plugin import AttackSpec, BuildContext, CostInputs, Criterion, Params

from advbench_plugins.attacks.budgets import MAX_NORM_HELP, minimal_norm_spec, norm_scale, positive_budgets


class _PaperRule:
    """Success is the benchmark's rule; foolbox's own class only supplies labels/targets."""

    paper: Criterion

    def __call__(self, perturbed, outputs):
        outputs_, restore = ep.astensor_(outputs)
        return restore(ep.astensor(self.paper(outputs_.raw)))


class _Untargeted(_PaperRule, fb.criteria.Misclassification):
    """foolbox's gradient attacks read ``labels`` for the loss direction."""

    def __init__(self, criterion: Criterion):
        super().__init__(criterion.labels)
        self.paper = criterion


class _Targeted(_PaperRule, fb.criteria.TargetedMisclassification):
    def __init__(self, criterion: Criterion):
        super().__init__(criterion.targets)
        self.paper = criterion


def foolbox_criterion(criterion: Criterion):
    return _Targeted(criterion) if criterion.targeted else _Untargeted(criterion)


def _sweep(attack, model, images, criterion, epsilons: list[float]) -> torch.Tensor:
    """Run over a list of budgets; per image keep the smallest budget that succeeds."""
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=images.device)
    _, clipped, success = attack(fmodel, images, foolbox_criterion(criterion), epsilons=epsilons)
    best = clipped[-1].clone()
    done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    for adv, ok in zip(clipped, success):
        take = ok & ~done
        best[take] = adv[take]
        done |= ok
    return best


def _minimize(attack, model, images, criterion) -> torch.Tensor:
    """Run a minimisation attack; rows it did not make adversarial come back unchanged.

    foolbox's Carlini-Wagner returns an all-zero (black) image for every row it never made
    adversarial, and a black image often passes a top-k rule by itself (so foolbox's own
    ``success`` is True for it): those rows used to be counted and saved as adversarial images.
    Non-finite rows are kept clean as well.
    """
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=images.device)
    _, clipped, success = attack(fmodel, images, foolbox_criterion(criterion), epsilons=None)
    flat, clean = clipped.flatten(1), images.flatten(1)
    sentinel = (flat == 0).all(1) & (clean != 0).any(1)  # CW's "nothing found" placeholder
    keep = success.to(images.device) & ~sentinel & torch.isfinite(flat).all(1)
    return torch.where(keep.view(-1, 1, 1, 1), clipped, images).clamp(0, 1)


def newtonfool(model, images: torch.Tensor, criterion, *, steps: int = 100, stepsize: float = 0.01) -> torch.Tensor:
    """NewtonFool (Jang et al. 2017, Algorithm 1) on the softmax probability p of the original label:
    ``delta = min(eta * ||x0|| * ||grad p||, p - 1/C)``, ``x <- x - delta * grad p / ||grad p||^2``.

    Replaces foolbox 3.3's NewtonFoolAttack, which squares both norms (``eta ||x0||^2 ||g||^2``
    and ``g / ||g||^4``): its steps explode as the softmax saturates and the clipped, destroyed
    images then pass the criterion (mean L2 ~15 on CIFAR-10). foolbox also stops at a top-1
    change; here each row stops once ``criterion`` holds (a top-k rule may need p below 1/C: there
    the step aims p at 0 instead) or ``steps`` run out.
    """
    x0 = images.detach()
    n = len(x0)
    labels = criterion.labels.to(x0.device)
    x = x0.clone()
    x0_norm = x0.flatten(1).norm(dim=1)
    active = torch.ones(n, dtype=torch.bool, device=x0.device)
    full = None  # latest logits of every row: the criterion is defined on the whole batch
    for _ in range(steps):  # the core re-checks the criterion after the last step
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        with torch.enable_grad():  # callers may hold a no_grad context
            xi = x[idx].clone().requires_grad_(True)
            logits = model(xi)
            p = logits.softmax(1).gather(1, labels[idx, None]).squeeze(1)
            (grad,) = torch.autograd.grad(p.sum(), xi)
        z = logits.detach()
        if full is None:
            full = torch.zeros(n, z.shape[1], device=x0.device, dtype=z.dtype)
        full[idx] = z
        done = criterion(full).to(x0.device)[idx]
        gnorm = grad.flatten(1).norm(dim=1)
        p = p.detach()
        # Jang et al. aim p at 1/C (enough for top-1); past it a stricter rule aims p at 0
        delta = torch.minimum(stepsize * x0_norm[idx] * gnorm, torch.where(p > 1.0 / z.shape[1], p - 1.0 / z.shape[1], p))
        move = ~done & (delta > 0) & (gnorm > 0)
        step = -(delta / gnorm.clamp_min(1e-12) ** 2).view(-1, *([1] * (x0.dim() - 1))) * grad
        x[idx[move]] = (x[idx[move]] + step[move]).clamp(0, 1)
        active[idx[~move]] = False
    return x


# --- parameters ----------------------------------------------------------------------------


class FastParams(Params):
    epsilons: list[float] = Field([0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1], min_length=1,
                                  description="Budgets to sweep, smallest first (per pixel value).")
    _positive = field_validator("epsilons")(positive_budgets)


class IterativeParams(Params):
    epsilons: list[float] = Field([0.01, 0.02, 0.03, 0.05], min_length=1,
                                  description="Budgets to sweep (per pixel value).")
    steps: int = Field(20, ge=1, description="Iterations.")
    rel_stepsize: float = Field(0.1, gt=0, description="Step size relative to the budget.")
    _positive = field_validator("epsilons")(positive_budgets)


class PGDParams(IterativeParams):
    steps: int = Field(40, ge=1, description="Iterations.")
    rel_stepsize: float = Field(1 / 30, gt=0, description="Step size relative to the budget.")


class DeepFoolParams(Params):
    steps: int = Field(50, ge=1, description="Iterations.")
    candidates: int = Field(10, ge=2, description="Top classes considered per step.")
    overshoot: float = Field(0.02, ge=0, description="Overshoot of each step.")
    max_norm: float | None = Field(None, gt=0, description=MAX_NORM_HELP)


class NewtonFoolParams(Params):
    steps: int = Field(100, ge=1, description="Iterations.")
    stepsize: float = Field(0.01, gt=0, description="eta of Jang et al.")
    max_norm: float | None = Field(None, gt=0, description=MAX_NORM_HELP)


class CWParams(Params):
    binary_search_steps: int = Field(5, ge=1, description="Searches over the constant c.")
    steps: int = Field(100, ge=1, description="Adam steps per search.")
    stepsize: float = Field(0.01, gt=0, description="Adam learning rate.")
    confidence: float = Field(0.0, ge=0, description="Logit margin kappa; raise it to push past top-k.")
    initial_const: float = Field(1e-3, gt=0, description="Initial trade-off constant c.")
    max_norm: float | None = Field(None, gt=0, description=MAX_NORM_HELP)


def _iterative(make: Callable[[IterativeParams], object], norm: str):
    def run(model, images, criterion, params: IterativeParams, ctx: BuildContext) -> torch.Tensor:
        scale = norm_scale(norm, images)
        return _sweep(make(params), model, images, criterion, [e * scale for e in params.epsilons])
    return run


def _fast(attack_type, norm: str):
    def run(model, images, criterion, params: FastParams, ctx: BuildContext) -> torch.Tensor:
        scale = norm_scale(norm, images)
        return _sweep(attack_type(), model, images, criterion, [e * scale for e in params.epsilons])
    return run


# --- costs: classifier passes per image, upper bounds (AttackSpec.cost) ----------------------
# Counted from foolbox 3.3's loops: a fixed-budget attack runs each budget of the sweep
# separately (``steps`` gradient steps, then one forward pass to check success), with no early
# stop; a minimisation attack (DeepFool, CW) ends with one forward pass to check success.


def _sweep_cost(steps: Callable[[Params], int]):
    def cost(p, inputs: CostInputs) -> tuple[float, float]:
        return len(p.epsilons) * (steps(p) + 1), len(p.epsilons) * steps(p)
    return cost


def _deepfool_cost(p: DeepFoolParams, inputs: CostInputs) -> tuple[float, float]:
    # the logits once, then per step one gradient per candidate class but the first; stops
    # early only when the whole batch is adversarial
    grads = p.steps * (min(p.candidates, inputs.num_classes) - 1)
    return 2 + grads, grads


def _newtonfool_cost(p: NewtonFoolParams, inputs: CostInputs) -> tuple[float, float]:
    return p.steps, p.steps  # one gradient per step; a row stops once adversarial


def _cw_cost(p: CWParams, inputs: CostInputs) -> tuple[float, float]:
    grads = p.binary_search_steps * p.steps  # Adam steps; abort_early may stop a search sooner
    return grads + 1, grads


def _bim(kind):
    return lambda p: kind(rel_stepsize=p.rel_stepsize, steps=p.steps, random_start=False)


ATTACKS = [
    AttackSpec(name="bim", summary="Basic iterative method, L∞ (Kurakin et al.), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.LinfBasicIterativeAttack), "linf"),
               budget_param="epsilons", norm="linf", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="pgd", summary="Projected gradient descent, L∞, random start (Kurakin et al.; Madry et al.), targeted.",
               params=PGDParams, targeted=True, default=True,
               run=_iterative(lambda p: fb.attacks.LinfPGD(rel_stepsize=p.rel_stepsize, steps=p.steps), "linf"),
               budget_param="epsilons", norm="linf", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="bim-untargeted", summary="Basic iterative method, L∞ (Kurakin et al.), non-targeted: the "
                                              "baselines' papers' BIM.",
               params=IterativeParams, run=_iterative(_bim(fb.attacks.LinfBasicIterativeAttack), "linf"),
               budget_param="epsilons", norm="linf", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="pgd-untargeted", summary="Projected gradient descent, L∞, random start (Madry et al. 2018), "
                                              "non-targeted: the usual PGD L∞ 8/255 of detection papers.",
               params=PGDParams, run=_iterative(lambda p: fb.attacks.LinfPGD(rel_stepsize=p.rel_stepsize, steps=p.steps),
                                                "linf"),
               budget_param="epsilons", norm="linf", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="l1-iter", summary="Basic iterative method under an L1 budget (foolbox), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.L1BasicIterativeAttack), "l1"),
               budget_param="epsilons", norm="l1", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="l2-iter", summary="Basic iterative method under an L2 budget (foolbox), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.L2BasicIterativeAttack), "l2"),
               budget_param="epsilons", norm="l2", cost=_sweep_cost(lambda p: p.steps)),
    AttackSpec(name="gradient", summary="L2 fast gradient (foolbox 'Gradient'), non-targeted, budget sweep.",
               params=FastParams, run=_fast(fb.attacks.L2FastGradientAttack, "l2"), budget_param="epsilons", norm="l2",
               cost=_sweep_cost(lambda p: 1)),
    AttackSpec(name="fgsm", summary="Fast gradient sign method (Goodfellow et al.), non-targeted, budget sweep.",
               params=FastParams, default=True, run=_fast(fb.attacks.FGSM, "linf"), budget_param="epsilons",
               norm="linf", cost=_sweep_cost(lambda p: 1)),
    minimal_norm_spec(name="deepfool", summary="DeepFool, L2 (Moosavi-Dezfooli et al.), non-targeted.",
                      params=DeepFoolParams, version="2", norm="l2", cost=_deepfool_cost,
                      unbounded=lambda m, x, c, p, ctx: _minimize(
                          fb.attacks.L2DeepFoolAttack(steps=p.steps, candidates=p.candidates, overshoot=p.overshoot),
                          m, x, c)),
    minimal_norm_spec(name="newtonfool", summary="NewtonFool (Jang et al.), non-targeted.",
                      params=NewtonFoolParams, version="3", norm="l2", cost=_newtonfool_cost,
                      unbounded=lambda m, x, c, p, ctx: newtonfool(m, x, c, steps=p.steps, stepsize=p.stepsize)),
    minimal_norm_spec(name="cw", summary="Carlini-Wagner L2, non-targeted.",
                      params=CWParams, version="2", norm="l2", cost=_cw_cost, unbounded=lambda m, x, c, p, ctx: _minimize(
                          fb.attacks.L2CarliniWagnerAttack(**p.model_dump(exclude={"max_norm"})), m, x, c)),
]
