"""Registers the paper's attacks that foolbox 3 lacks, implemented here from their papers:
L-BFGS (Szegedy et al. 2013), the saliency-map attack JSMA (Papernot et al. 2016) and ADef
(Alaifari et al. 2019)."""

from __future__ import annotations

import math

from pydantic import Field

from advbench.plugin import AttackSpec, CostInputs, Params

from advbench_plugins.attacks.adef import adef_attack
from advbench_plugins.attacks.budgets import MAX_NORM_HELP, minimal_norm_spec
from advbench_plugins.attacks.jsma import jsma_attack
from advbench_plugins.attacks.lbfgs import lbfgs_attack


class LBFGSParams(Params):
    initial_const: float = Field(1e-2, gt=0, description="Initial weight c of the distortion term.")
    binary_search_steps: int = Field(5, ge=1, description="Searches over c per image.")
    max_iterations: int = Field(50, ge=1, description="L-BFGS iterations per search step.")
    learning_rate: float = Field(1.0, gt=0, description="L-BFGS step length.")
    max_norm: float | None = Field(None, gt=0, description=MAX_NORM_HELP)


class JSMAParams(Params):
    theta: float = Field(1.0, description="Change applied to each chosen feature (+1: increase to max).")
    gamma: float = Field(0.1, gt=0, le=1, description="Largest fraction of features changed.")
    max_iterations: int | None = Field(None, ge=1, description="Iterations at most (default: from gamma).")


class ADefParams(Params):
    max_iterations: int = Field(50, ge=1, description="Deformation steps at most.")
    sigma: float = Field(0.5, ge=0, description="Gaussian smoothing of the vector field, in pixels.")
    overshoot: float = Field(1.2, ge=1, description="Step overshoot factor.")
    candidates: int = Field(1, ge=1, description="Classes considered per step.")


# --- costs: classifier passes per image, upper bounds (AttackSpec.cost) ----------------------

#: torch.optim.LBFGS's line search (strong Wolfe) may evaluate this many times past max_eval
_LBFGS_LINE_SEARCH = 25


def _lbfgs_cost(p: LBFGSParams, inputs: CostInputs) -> tuple[float, float]:
    # per search over c, torch's LBFGS evaluates the objective (forward + backward) at most
    # max_eval = max_iter * 5 // 4 times, plus the line search in flight when it stops
    evals = p.binary_search_steps * (p.max_iterations * 5 // 4 + _LBFGS_LINE_SEARCH)
    return 1 + evals, evals


def _jsma_cost(p: JSMAParams, inputs: CostInputs) -> tuple[float, float]:
    c, h, w = inputs.image_shape
    iterations = p.max_iterations if p.max_iterations is not None else math.floor(p.gamma * c * h * w / 2)
    # the logits once, then per iteration (and a last check) one forward and two gradients
    return 2 + iterations, 2 * (iterations + 1)


def _adef_cost(p: ADefParams, inputs: CostInputs) -> tuple[float, float]:
    # a forward pass per step and a last check; a gradient per candidate class per step
    return p.max_iterations + 1, p.max_iterations * min(p.candidates, inputs.num_classes - 1)


def _call(fn):
    return lambda model, images, criterion, params, ctx: fn(model, images, criterion,
                                                            **params.model_dump(exclude={"max_norm"}))


ATTACKS = [
    minimal_norm_spec(name="lbfgs", summary="Box-constrained L-BFGS (Szegedy et al.), targeted.",
                      params=LBFGSParams, targeted=True, norm="l2", unbounded=_call(lbfgs_attack), cost=_lbfgs_cost),
    # gamma bounds the fraction of values changed: an L0 budget
    AttackSpec(name="jsma", summary="Jacobian saliency map attack (Papernot et al.), non-targeted rule.",
               params=JSMAParams, run=_call(jsma_attack), budget_param="gamma", norm="l0", cost=_jsma_cost),
    # a deformation is not an Lp perturbation
    AttackSpec(name="adef", summary="ADef adversarial deformations (Alaifari et al.), non-targeted.",
               params=ADefParams, run=_call(adef_attack), norm="", cost=_adef_cost),
]
