"""Registers the adaptive attacks (:mod:`advbench_plugins.attacks.adaptive`): attackers who know
the defense they face, handed to them as ``ctx.defense`` (docs/threat-models.md).

Budgets are per pixel value, as for the oblivious attacks: an L∞ ``epsilon`` is per value, an L2
``epsilon`` means ``epsilon * sqrt(D)`` for D = C*H*W values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from advbench.plugin import (AttackContext, AttackOutput, AttackSpec, CostInputs, Criterion, Params, PluginError,
                            hookimpl)

from advbench_plugins.attacks.adaptive.common import (require_defense, seeded_generator, seen_by_system,
                                                      system_decision, topk_of)
from advbench_plugins.attacks.adaptive.eot import eot_pgd
from advbench_plugins.attacks.adaptive.hsj import hop_skip_jump
from advbench_plugins.attacks.adaptive.joint import joint_attack
from advbench_plugins.attacks.adaptive.ranking import rank_eot


class _PGDParams(Params):
    epsilon: float = Field(0.03, gt=0, description="Budget per pixel value, the L∞ norm (8/255 is about 0.031).")
    steps: int = Field(40, ge=1, description="Gradient steps per run (a row stops once it succeeds).")
    rel_stepsize: float = Field(0.1, gt=0, description="Step size relative to the budget.")
    random_start: bool = Field(True, description="Start each run from a uniform point of the budget ball.")
    loss: Literal["ce", "cw"] = Field("ce", description="Towards the adversarial label: cross-entropy, or the "
                                                       "Carlini-Wagner logit margin.")
    confidence: float = Field(0.0, ge=0, description="Logit margin kept past the success rule (robustness to "
                                                     "8-bit rounding and to the Pillow backend).")
    through_storage: bool = Field(True, description="Optimise what the defended system sees: the iterate after "
                                                    "the database's save -> reload (JPEG q100 by default; "
                                                    "straight-through gradient). false: the raw iterate, whose "
                                                    "evasion the saved file may lose.")


class EOTParams(_PGDParams):
    restarts: int = Field(1, ge=1, description="Runs from new random starts for rows not yet done.")
    eot_samples: int = Field(0, ge=0, description="Operations sampled per step besides the identity (0: all of "
                                                  "them every step).")
    check_every: int = Field(1, ge=1, description="Steps between checks of the label under every operation (each "
                                                  "costs a forward pass per operation not sampled).")


class RankParams(_PGDParams):
    steps: int = Field(50, ge=1, description="Gradient steps per run (a row stops once the system is fooled).")
    restarts: int = Field(1, ge=1, description="Runs from new random starts for rows not yet done.")
    eot_samples: int = Field(8, ge=0, description="Operations sampled per step (0: all of them every step).")
    loss: Literal["ce", "cw"] = Field("cw", description="Towards the adversarial label on the untransformed image "
                                                       "(and under each operation with op_label_loss).")
    confidence: float = Field(1.0, ge=0, description="Logit margin kept past the success rule.")
    k: int = Field(0, ge=0, description="Ranked positions kept under every operation: 0 = the k of the defense's "
                                        "feature (Defense.top_k), else the rule's k.")
    ranking_loss: Literal["hinge", "kl"] = Field(
        "hinge", description="hinge: each operation keeps the untransformed top-k list, each class ahead of the next "
                             "by rank_margin logits; kl: KL(p(x) || p(op(x))), each operation's softmax kept on the "
                             "untransformed one.")
    rank_margin: float = Field(1.0, ge=0, description="Logit margin of the ranking hinges (also on the untransformed "
                                                      "image).")
    kl_weight: float = Field(1.0, ge=0, description="Weight of each operation's KL term (ranking_loss = 'kl').")
    op_label_loss: bool = Field(False, description="Add the towards-label loss under each sampled operation (EOT of "
                                                   "the classifier loss, as eot-pgd).")
    adversarial_label: Literal["runner-up", "random"] = Field(
        "runner-up", description="The label driven to the top: the highest-ranked other class at the start, or a "
                                 "seeded uniform other class (a targeted attack's random target).")
    check_every: int = Field(5, ge=1, description="Steps between checks of the defended system's decision (each "
                                                  "costs a forward pass per operation).")


class CWJointParams(_PGDParams):
    steps: int = Field(100, ge=1, description="Gradient steps per round (a row stops once it succeeds).")
    rounds: int = Field(3, ge=1, description="Rounds of the search over c, each a run from a new start: c ×10 for "
                                             "a row misclassified (but flagged) in the last round, ÷10 otherwise.")
    const: float = Field(1.0, gt=0, description="Initial weight c of the detector term max(score - threshold + "
                                                "margin, 0).")
    loss: Literal["ce", "cw"] = Field("cw", description="Classifier loss: cross-entropy or the Carlini-Wagner margin.")
    detector_margin: float = Field(0.0, ge=0, description="Score must end this far below the detector's threshold.")


class OPGDParams(_PGDParams):
    steps: int = Field(100, ge=1, description="Gradient steps per run (a row stops once it succeeds).")
    restarts: int = Field(1, ge=1, description="Runs from new random starts for rows not yet done.")
    method: Literal["orthogonal", "selective"] = Field(
        "orthogonal", description="orthogonal: each gradient projected orthogonally to the other's; selective: the "
                                  "classifier gradient until misclassified, then the detector's, unprojected.")
    detector_margin: float = Field(0.0, ge=0, description="Score must end this far below the detector's threshold.")
    confidence: float = Field(0.0, ge=0, description="Logit margin past the success rule before the detector's "
                                                     "gradient takes over.")
    linf_step: Literal["orthogonal-sign", "sign"] = Field(
        "orthogonal-sign", description="L∞ only: sign: the sign of the projected gradient (the authors' code); "
                                       "orthogonal-sign: that sign projected once more orthogonally to the other "
                                       "gradient, rescaled to unit L∞ norm.")


_L2_EPSILON = Field(0.01, gt=0, description="Budget per pixel value: an L2 norm of epsilon * sqrt(C*H*W) (0.55 on "
                                           "CIFAR-10's 32x32x3).")


class EOTParamsL2(EOTParams):
    epsilon: float = _L2_EPSILON


class RankParamsL2(RankParams):
    epsilon: float = _L2_EPSILON


class CWJointParamsL2(CWJointParams):
    epsilon: float = _L2_EPSILON


class OPGDParamsL2(OPGDParams):
    epsilon: float = _L2_EPSILON


class HSJParams(Params):
    max_queries: int = Field(1000, ge=1, description="Decisions asked per image at most (start search included).")
    iterations: int = Field(64, ge=1, description="HopSkipJump iterations at most.")
    init_evals: int = Field(100, ge=1, description="Probes B_0 of the first gradient estimate (B_t = B_0 sqrt(t)).")
    max_evals: int = Field(1000, ge=1, description="Probes per gradient estimate at most.")
    gamma: float = Field(1.0, gt=0, description="Binary-search threshold factor γ (θ = γ/d^1.5 for L2, γ/d² for L∞).")
    init_queries: int = Field(100, ge=1, description="Queries per image to find a starting point the system calls "
                                                     "adversarial.")
    init_from_batch: bool = Field(True, description="Try the batch's other images before uniform noise as starting "
                                                    "points.")
    batch_size: int = Field(256, ge=1, description="Images per call of the model and the detector.")
    through_storage: bool = Field(True, description="Optimise what the defended system sees: the iterate after "
                                                    "the database's save -> reload (JPEG q100 by default; "
                                                    "straight-through gradient). false: the raw iterate, whose "
                                                    "evasion the saved file may lose.")


def _eot(norm: str):
    def run(model, images, criterion: Criterion, params: EOTParams, ctx: AttackContext) -> AttackOutput:
        defense = require_defense(f"eot-pgd ({norm})", ctx, operations=True)
        result = eot_pgd(model, images, criterion, defense.operations, storage=seen_by_system(defense, params),
                         norm=norm, epsilon=params.epsilon,
                         steps=params.steps, rel_stepsize=params.rel_stepsize, restarts=params.restarts,
                         random_init=params.random_start, eot_samples=params.eot_samples, loss=params.loss,
                         confidence=params.confidence, gen=seeded_generator(ctx), start=getattr(ctx, "start", None),
                         check_every=params.check_every)
        return AttackOutput(result.images, {"steps": result.steps, "stable_fraction": result.stable})
    return run


def _rank(norm: str):
    def run(model, images, criterion: Criterion, params: RankParams, ctx: AttackContext) -> AttackOutput:
        defense = require_defense(f"rank-eot ({norm})", ctx, operations=True)
        storage = seen_by_system(defense, params)
        has_decision = defense.flags is not None or defense.detector_scores is not None or defense.correct is not None
        decide = system_decision(model, criterion, defense, len(images)) if has_decision else None
        result = rank_eot(model, images, criterion, defense.operations, norm=norm, epsilon=params.epsilon,
                          steps=params.steps, rel_stepsize=params.rel_stepsize, restarts=params.restarts,
                          random_init=params.random_start, eot_samples=params.eot_samples, loss=params.loss,
                          confidence=params.confidence, k=params.k or defense.top_k or topk_of(criterion),
                          ranking_loss=params.ranking_loss, rank_margin=params.rank_margin,
                          kl_weight=params.kl_weight, op_label_loss=params.op_label_loss,
                          adversarial_label=params.adversarial_label, check_every=params.check_every,
                          gen=seeded_generator(ctx), decide=decide, storage=storage, start=getattr(ctx, "start", None))
        return AttackOutput(result.images, {"steps": result.steps, "evaded": result.evaded})
    return run


def _joint(norm: str, method: str | None):
    def run(model, images, criterion: Criterion, params, ctx: AttackContext) -> AttackOutput:
        chosen = method or params.method
        defense = require_defense(f"{'cw-joint' if chosen == 'cw' else 'opgd'} ({norm})", ctx, scores=True)
        result = joint_attack(
            model, images, criterion, defense.detector_scores, float(defense.threshold), method=chosen, norm=norm,
            epsilon=params.epsilon, steps=params.steps, rel_stepsize=params.rel_stepsize,
            rounds=params.rounds if chosen == "cw" else params.restarts, random_init=params.random_start,
            loss=params.loss, confidence=params.confidence, detector_margin=params.detector_margin,
            const=params.const if chosen == "cw" else 1.0, gen=seeded_generator(ctx),
            linf_step=getattr(params, "linf_step", "sign"), storage=seen_by_system(defense, params),
            start=getattr(ctx, "start", None))
        per_image = {"steps": result.steps, "detector_score": result.scores}
        if chosen == "cw":
            per_image["const"] = result.const
        return AttackOutput(result.images, per_image)
    return run


def _hsj(norm: str):
    def run(model, images, criterion: Criterion, params: HSJParams, ctx: AttackContext) -> AttackOutput:
        defense = require_defense(f"system-hsj ({norm})", ctx)
        if defense.flags is None and defense.detector_scores is None and defense.correct is None:
            raise PluginError(f"attack 'system-hsj' needs the decision of defense {defense.name!r} (flags, "
                              "detector_scores or correct); it has none")
        decide = system_decision(model, criterion, defense, len(images), params.batch_size,
                                 storage=seen_by_system(defense, params))
        result = hop_skip_jump(decide, images, norm=norm, max_queries=params.max_queries,
                               iterations=params.iterations, init_evals=params.init_evals,
                               max_evals=params.max_evals, gamma=params.gamma, init_queries=params.init_queries,
                               init_from_batch=params.init_from_batch, gen=seeded_generator(ctx))
        return AttackOutput(result.images, {"queries": result.queries, "steps": result.iterations,
                                            "start_found": result.found.float()})
    return run


# --- costs: classifier passes per image, upper bounds (AttackSpec.cost) ----------------------
# ``inputs.operations`` is the number of image operations of the targeted defense. The
# defense's own passes (a detector network's scores) are not the classifier's and not counted.


def _eot_cost(p: EOTParams, inputs: CostInputs) -> tuple[float, float]:
    ops = inputs.operations
    sampled = ops if p.eot_samples <= 0 or p.eot_samples >= ops else p.eot_samples
    # each iterate (steps and a last check, per restart): the image and the sampled operations
    # forward, every operation at a check; the gradient flows back through the image and the
    # sampled operations
    checks = p.steps // p.check_every + 1
    forward = p.steps * (1 + sampled) + checks * (1 + ops)
    return 1 + p.restarts * min(forward, (p.steps + 1) * (1 + ops)), p.restarts * p.steps * (1 + sampled)


def _rank_cost(p: RankParams, inputs: CostInputs) -> tuple[float, float]:
    ops = inputs.operations
    sampled = ops if p.eot_samples <= 0 or p.eot_samples >= ops else p.eot_samples
    checks = p.steps // p.check_every + 1
    # each step: the image and the sampled operations, forward and back; each check: the image
    # and every operation forward (the system's decision)
    return p.restarts * (p.steps * (1 + sampled) + checks * (1 + ops)), p.restarts * p.steps * (1 + sampled)


def _joint_cost(p, inputs: CostInputs) -> tuple[float, float]:
    runs = p.rounds if isinstance(p, CWJointParams) else p.restarts
    return 1 + runs * (p.steps + 1), runs * p.steps


def _hsj_cost(p: HSJParams, inputs: CostInputs) -> tuple[float, float]:
    # each decision: the classifier, and a feature detector's labels under its operations
    per_query = 1 + (1 + inputs.operations if inputs.operations else 0)
    return p.max_queries * per_query, 0.0


# a detector cell on a feature of labels under a group's operations is attacked through those
# operations (the defense hands them in); one that sees images has none, and eot-pgd says so
_OPS = ("operations", "detector", "pipeline")
_SYSTEM = ("detector", "pipeline")  # a decision needs a detector or corrector
ATTACKS = [
    AttackSpec(name="eot-pgd", summary="EOT-PGD, L∞: one adversarial label under every operation of the group "
                                       "(Athalye et al. 2018; BPDA for JPEG).",
               params=EOTParams, run=_eot("linf"), cost=_eot_cost, budget_param="epsilon", norm="linf", adaptive=_OPS,
               warm_start=True),
    AttackSpec(name="eot-pgd-l2", summary="EOT-PGD, L2: one adversarial label under every operation of the group "
                                          "(Athalye et al. 2018; BPDA for JPEG).",
               params=EOTParamsL2, run=_eot("l2"), cost=_eot_cost, budget_param="epsilon", norm="l2", adaptive=_OPS,
               warm_start=True),
    AttackSpec(name="rank-eot", summary="Feature-level EOT, L∞: every operation keeps the whole top-k ranking (a "
                                        "surrogate of the counting/differences features; BPDA for JPEG).",
               params=RankParams, run=_rank("linf"), cost=_rank_cost, budget_param="epsilon", norm="linf",
               adaptive=_OPS, warm_start=True),
    AttackSpec(name="rank-eot-l2", summary="Feature-level EOT, L2: every operation keeps the whole top-k ranking (a "
                                           "surrogate of the counting/differences features; BPDA for JPEG).",
               params=RankParamsL2, run=_rank("l2"), cost=_rank_cost, budget_param="epsilon", norm="l2",
               adaptive=_OPS, warm_start=True),
    AttackSpec(name="cw-joint", summary="Classifier + detector combined loss (Carlini & Wagner 2017), L∞ PGD.",
               params=CWJointParams, run=_joint("linf", "cw"), cost=_joint_cost, budget_param="epsilon", norm="linf",
               adaptive=("detector",), needs_scores=True, warm_start=True),
    AttackSpec(name="cw-joint-l2", summary="Classifier + detector combined loss (Carlini & Wagner 2017), L2 PGD.",
               params=CWJointParamsL2, run=_joint("l2", "cw"), cost=_joint_cost, budget_param="epsilon", norm="l2",
               adaptive=("detector",), needs_scores=True, warm_start=True),
    AttackSpec(name="opgd", summary="Orthogonal projected gradient descent against a detector (Bryniarski et al. "
                                    "2022), L∞.",
               params=OPGDParams, run=_joint("linf", None), cost=_joint_cost, budget_param="epsilon", norm="linf",
               adaptive=("detector",), needs_scores=True, warm_start=True),
    AttackSpec(name="opgd-l2", summary="Orthogonal projected gradient descent against a detector (Bryniarski et al. "
                                       "2022), L2.",
               params=OPGDParamsL2, run=_joint("l2", None), cost=_joint_cost, budget_param="epsilon", norm="l2",
               adaptive=("detector",), needs_scores=True, warm_start=True),
    AttackSpec(name="system-hsj", summary="HopSkipJump, L2, on the defended system's label-only decision (Chen et "
                                          "al. 2020).",
               params=HSJParams, run=_hsj("l2"), cost=_hsj_cost, norm="l2", threat="decision-based", adaptive=_SYSTEM),
    AttackSpec(name="system-hsj-linf", summary="HopSkipJump, L∞, on the defended system's label-only decision (Chen "
                                               "et al. 2020).",
               params=HSJParams, run=_hsj("linf"), cost=_hsj_cost, norm="linf", threat="decision-based", adaptive=_SYSTEM),
]


@hookimpl
def advbench_register_attacks(register):
    for spec in ATTACKS:
        register(spec)
