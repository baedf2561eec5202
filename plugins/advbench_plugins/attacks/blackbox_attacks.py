"""Registers the black-box attacks: the score-based Square Attack (L∞, L2), the decision-based
HopSkipJump (L2, L∞) and Boundary attacks (through foolbox), and the spatial grid search.

Each returns an :class:`AttackOutput` with the per-image ``queries``: model evaluations spent on
that row, every forward pass counted (the search for a starting point and the init included).
"""

from __future__ import annotations

from typing import Literal

import foolbox as fb
from pydantic import Field, model_validator

from advbench.plugin import AttackOutput, AttackSpec, CostInputs, Params

from advbench_plugins.attacks.budgets import MAX_NORM_HELP, minimal_norm_spec, norm_scale
from advbench_plugins.attacks.decision import decision_attack
from advbench_plugins.attacks.spatial import spatial_attack, spatial_grid
from advbench_plugins.attacks.square import square_attack

QUERIES_HELP = "Model evaluations allowed per image, everything included."


class SquareLinfParams(Params):
    epsilon: float = Field(0.05, gt=0, description="L∞ budget per pixel value (the paper's ImageNet 0.05).")
    max_queries: int = Field(10_000, ge=1, description=QUERIES_HELP)
    p_init: float = Field(0.05, gt=0, le=1, description="Initial fraction of pixels in the square (halved on "
                                                        "schedule).")


class SquareL2Params(Params):
    epsilon: float = Field(0.01, gt=0, description="L2 budget per pixel value (times sqrt(D); the paper's "
                                                   "ImageNet 5 is ~0.01).")
    max_queries: int = Field(10_000, ge=1, description=QUERIES_HELP)
    p_init: float = Field(0.1, gt=0, le=1, description="Initial fraction of pixels in the square (halved on "
                                                       "schedule).")


class _DecisionParams(Params):
    max_queries: int = Field(10_000, ge=1, description=QUERIES_HELP)
    init_directions: int = Field(20, ge=1, description="Uniform noise images tried per image for a starting point "
                                                      "(then the batch's other images, nearest first).")
    init_search_steps: int = Field(10, ge=0, description="Binary-search steps on the blend towards the clean image.")
    max_norm: float | None = Field(None, gt=0, description=MAX_NORM_HELP)


class HopSkipJumpParams(_DecisionParams):
    steps: int = Field(64, ge=1, description="Iterations at most (the query budget usually ends the run first).")
    initial_gradient_eval_steps: int = Field(100, ge=1, description="Queries of the first gradient estimate.")
    max_gradient_eval_steps: int = Field(10_000, ge=1, description="Queries of a gradient estimate at most.")
    gamma: float = Field(1.0, gt=0, description="Binary-search threshold factor (theta = gamma / d^1.5 for L2).")
    stepsize_search: Literal["geometric_progression", "grid_search"] = Field(
        "geometric_progression", description="How the step size is chosen.")


class BoundaryParams(_DecisionParams):
    spherical_step: float = Field(0.01, gt=0, description="Initial orthogonal step (relative).")
    source_step: float = Field(0.01, gt=0, description="Initial step towards the clean image (relative).")
    source_step_convergence: float = Field(1e-7, gt=0, description="Stop once the source step is below this.")
    step_adaptation: float = Field(1.5, gt=1, description="Factor the steps are multiplied or divided by.")
    update_stats_every_k: int = Field(10, ge=1, description="Steps between step-size adaptations.")


class SpatialParams(Params):
    max_angle: float = Field(30.0, ge=0, le=180, description="Largest rotation, degrees (either way).")
    n_angles: int = Field(31, ge=1, description="Rotation angles on the grid.")
    max_shift: float = Field(3.0, ge=0, description="Largest translation per axis, pixels (CIFAR-10: 3 ~ 10%).")
    n_shifts: int = Field(5, ge=1, description="Translations per axis on the grid.")

    @model_validator(mode="after")
    def _grid_has_points(self) -> SpatialParams:
        if not spatial_grid(self.max_angle, self.n_angles, self.max_shift, self.n_shifts):
            raise ValueError("the grid holds only the identity: raise n_angles with max_angle > 0, or n_shifts "
                             "with max_shift > 0")
        return self


def _square(norm: str):
    def run(model, images, criterion, params, ctx) -> AttackOutput:
        adversarial, queries = square_attack(model, images, criterion, norm=norm,
                                             eps=params.epsilon * norm_scale(norm, images),
                                             max_queries=params.max_queries, p_init=params.p_init, seed=ctx.seed)
        return AttackOutput(adversarial, {"queries": queries})
    return run


def _hopskipjump(norm: str):
    def unbounded(model, images, criterion, params: HopSkipJumpParams, ctx) -> AttackOutput:
        attack = fb.attacks.HopSkipJumpAttack(
            steps=params.steps, initial_gradient_eval_steps=params.initial_gradient_eval_steps,
            max_gradient_eval_steps=params.max_gradient_eval_steps, stepsize_search=params.stepsize_search,
            gamma=params.gamma, constraint=norm)
        return _decision(attack, norm, model, images, criterion, params, ctx)
    return unbounded


def _boundary(model, images, criterion, params: BoundaryParams, ctx) -> AttackOutput:
    # one query per step at least: the budget, not the step count, ends the run
    attack = fb.attacks.BoundaryAttack(
        steps=params.max_queries, spherical_step=params.spherical_step, source_step=params.source_step,
        source_step_convergance=params.source_step_convergence, step_adaptation=params.step_adaptation,
        update_stats_every_k=params.update_stats_every_k)
    return _decision(attack, "l2", model, images, criterion, params, ctx)


def _decision(attack, norm, model, images, criterion, params: _DecisionParams, ctx) -> AttackOutput:
    adversarial, queries = decision_attack(attack, model, images, criterion, norm=norm, max_queries=params.max_queries,
                                           init_directions=params.init_directions,
                                           init_search_steps=params.init_search_steps, seed=ctx.seed)
    return AttackOutput(adversarial, {"queries": queries})


def _spatial(model, images, criterion, params: SpatialParams, ctx) -> AttackOutput:
    adversarial, queries = spatial_attack(model, images, criterion, **params.model_dump())
    return AttackOutput(adversarial, {"queries": queries})


# --- costs: classifier passes per image, upper bounds (AttackSpec.cost) ----------------------
# Every model evaluation is a query and the query budget caps each row (QueryCounter, the
# square loop), the start search included; the grid search asks each grid point at most once.


def _queries_cost(p, inputs: CostInputs) -> tuple[float, float]:
    return float(p.max_queries), 0.0


def _spatial_cost(p: SpatialParams, inputs: CostInputs) -> tuple[float, float]:
    return float(len(spatial_grid(p.max_angle, p.n_angles, p.max_shift, p.n_shifts))), 0.0


ATTACKS = [
    AttackSpec(name="square-linf",
               summary="Square Attack, L∞, score-based random search (Andriushchenko et al. 2020).",
               params=SquareLinfParams, run=_square("linf"), budget_param="epsilon", norm="linf", threat="score-based",
               cost=_queries_cost),
    AttackSpec(name="square-l2",
               summary="Square Attack, L2, score-based random search (Andriushchenko et al. 2020).",
               params=SquareL2Params, run=_square("l2"), budget_param="epsilon", norm="l2", threat="score-based",
               cost=_queries_cost),
    minimal_norm_spec(name="hopskipjump", summary="HopSkipJump, L2, decision-based (Chen et al. 2020; foolbox), "
                      "query budget.", params=HopSkipJumpParams, unbounded=_hopskipjump("l2"), norm="l2",
                      threat="decision-based", cost=_queries_cost),
    minimal_norm_spec(name="hopskipjump-linf", summary="HopSkipJump, L∞, decision-based (Chen et al. 2020; foolbox), "
                      "query budget.", params=HopSkipJumpParams, unbounded=_hopskipjump("linf"), norm="linf",
                      threat="decision-based", cost=_queries_cost),
    minimal_norm_spec(name="boundary", summary="Boundary attack, L2, decision-based (Brendel et al. 2018; foolbox), "
                      "query budget.", params=BoundaryParams, unbounded=_boundary, norm="l2", threat="decision-based",
                      cost=_queries_cost),
    # decision-based: only the criterion's verdict on each transformed image is used
    AttackSpec(name="spatial", summary="Spatial grid search over rotations and translations (Engstrom et al. 2019).",
               params=SpatialParams, run=_spatial, budget_param="", norm="", threat="decision-based",
               cost=_spatial_cost),
]
