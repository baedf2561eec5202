"""The paper's attacks that foolbox 3 implements, under the paper's success criteria (§2.2).

Budgets are given per pixel value so one default fits any image size: an L2 budget ``e`` means
``e * sqrt(D)`` and an L1 budget ``e * D`` for D = C*H*W values (L∞ budgets are per value
already). Fast single-step attacks sweep a list of budgets and keep, per image, the smallest
that succeeds, as foolbox 1.8 (the paper's version) did.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import eagerpy as ep
import foolbox as fb
import torch
from pydantic import Field

from advbench import hookimpl
from advbench.specs import AttackSpec, BuildContext, Criterion, Params


class _Untargeted(fb.criteria.Misclassification):
    """foolbox's gradient attacks read ``labels`` for the loss; success is the paper's rule."""

    def __init__(self, criterion: Criterion):
        super().__init__(criterion.labels)
        self.paper = criterion

    def __call__(self, perturbed, outputs):
        outputs_, restore = ep.astensor_(outputs)
        return restore(ep.astensor(self.paper(outputs_.raw)))


class _Targeted(fb.criteria.TargetedMisclassification):
    def __init__(self, criterion: Criterion):
        super().__init__(criterion.targets)
        self.paper = criterion

    def __call__(self, perturbed, outputs):
        outputs_, restore = ep.astensor_(outputs)
        return restore(ep.astensor(self.paper(outputs_.raw)))


def foolbox_criterion(criterion: Criterion):
    return _Targeted(criterion) if criterion.targeted else _Untargeted(criterion)


def _scale(norm: str, images: torch.Tensor) -> float:
    d = images[0].numel()
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


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
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=images.device)
    _, clipped, _ = attack(fmodel, images, foolbox_criterion(criterion), epsilons=None)
    # NewtonFool divides by the gradient norm: a flat gradient gives NaN rows; keep those clean
    finite = torch.isfinite(clipped).flatten(1).all(1)
    return torch.where(finite.view(-1, 1, 1, 1), clipped, images).clamp(0, 1)


# --- parameters ----------------------------------------------------------------------------


class FastParams(Params):
    epsilons: list[float] = Field([0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1],
                                  description="Budgets to sweep, smallest first (per pixel value).")


class IterativeParams(Params):
    epsilons: list[float] = Field([0.01, 0.02, 0.03, 0.05], description="Budgets to sweep (per pixel value).")
    steps: int = Field(20, ge=1, description="Iterations.")
    rel_stepsize: float = Field(0.1, gt=0, description="Step size relative to the budget.")


class PGDParams(IterativeParams):
    steps: int = Field(40, ge=1, description="Iterations.")
    rel_stepsize: float = Field(1 / 30, gt=0, description="Step size relative to the budget.")


class DeepFoolParams(Params):
    steps: int = Field(50, ge=1, description="Iterations.")
    candidates: int = Field(10, ge=2, description="Top classes considered per step.")
    overshoot: float = Field(0.02, ge=0, description="Overshoot of each step.")


class NewtonFoolParams(Params):
    steps: int = Field(100, ge=1, description="Iterations.")
    stepsize: float = Field(0.01, gt=0, description="eta of Jang et al.")


class CWParams(Params):
    binary_search_steps: int = Field(5, ge=1, description="Searches over the constant c.")
    steps: int = Field(100, ge=1, description="Adam steps per search.")
    stepsize: float = Field(0.01, gt=0, description="Adam learning rate.")
    confidence: float = Field(0.0, ge=0, description="Logit margin kappa; raise it to push past top-k.")
    initial_const: float = Field(1e-3, gt=0, description="Initial trade-off constant c.")


def _iterative(make: Callable[[IterativeParams], object], norm: str):
    def run(model, images, criterion, params: IterativeParams, ctx: BuildContext) -> torch.Tensor:
        scale = _scale(norm, images)
        return _sweep(make(params), model, images, criterion, [e * scale for e in params.epsilons])
    return run


def _fast(attack_type, norm: str):
    def run(model, images, criterion, params: FastParams, ctx: BuildContext) -> torch.Tensor:
        scale = _scale(norm, images)
        return _sweep(attack_type(), model, images, criterion, [e * scale for e in params.epsilons])
    return run


def _bim(kind):
    return lambda p: kind(rel_stepsize=p.rel_stepsize, steps=p.steps, random_start=False)


ATTACKS = [
    AttackSpec(name="bim", summary="Basic iterative method, L∞ (Kurakin et al.), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.LinfBasicIterativeAttack), "linf")),
    AttackSpec(name="pgd", summary="Projected gradient descent, L∞, random start (Kurakin et al.; Madry et al.), targeted.",
               params=PGDParams, targeted=True, default=True,
               run=_iterative(lambda p: fb.attacks.LinfPGD(rel_stepsize=p.rel_stepsize, steps=p.steps), "linf")),
    AttackSpec(name="l1-iter", summary="Basic iterative method under an L1 budget (foolbox), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.L1BasicIterativeAttack), "l1")),
    AttackSpec(name="l2-iter", summary="Basic iterative method under an L2 budget (foolbox), targeted.",
               params=IterativeParams, targeted=True, run=_iterative(_bim(fb.attacks.L2BasicIterativeAttack), "l2")),
    AttackSpec(name="gradient", summary="L2 fast gradient (foolbox 'Gradient'), non-targeted, budget sweep.",
               params=FastParams, run=_fast(fb.attacks.L2FastGradientAttack, "l2")),
    AttackSpec(name="fgsm", summary="Fast gradient sign method (Goodfellow et al.), non-targeted, budget sweep.",
               params=FastParams, default=True, run=_fast(fb.attacks.FGSM, "linf")),
    AttackSpec(name="deepfool", summary="DeepFool, L2 (Moosavi-Dezfooli et al.), non-targeted.",
               params=DeepFoolParams, run=lambda m, x, c, p, ctx: _minimize(
                   fb.attacks.L2DeepFoolAttack(steps=p.steps, candidates=p.candidates, overshoot=p.overshoot), m, x, c)),
    AttackSpec(name="newtonfool", summary="NewtonFool (Jang et al.), non-targeted.",
               params=NewtonFoolParams, run=lambda m, x, c, p, ctx: _minimize(
                   fb.attacks.NewtonFoolAttack(steps=p.steps, stepsize=p.stepsize), m, x, c)),
    AttackSpec(name="cw", summary="Carlini-Wagner L2, non-targeted.",
               params=CWParams, run=lambda m, x, c, p, ctx: _minimize(
                   fb.attacks.L2CarliniWagnerAttack(**p.model_dump()), m, x, c)),
]


@hookimpl
def advbench_register_attacks(register):
    for spec in ATTACKS:
        register(spec)
