"""The feature-level attack (rank-eot) on the tiny world: it keeps the whole top-k ranking under
the operations, so it evades a planted detector that reads the ranking, which EOT-PGD on the
top-1 label does not; and every gradient attack starts from a warm start when given one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advbench.criteria import PaperCriterion
from advbench.differentiable import differentiable_operation
from advbench.specs import AttackContext, Defense
from advbench.testing import digits, tiny_model

from advbench_plugins.attacks.adaptive.eot import eot_pgd
from advbench_plugins.attacks.adaptive.ranking import ranking_hinge, ranking_kept, softmax_kl
from advbench_plugins.attacks.adaptive_plugins import ATTACKS
from advbench_plugins.transforms.paper_ops import TRANSFORMS

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {a.name: a for a in ATTACKS}
# mild operations (the paper's kinds): a clean digit mostly keeps its top-1 under them, its
# ranks 2-3 much less often
OPS = [("jpeg", {"quality": 90}), ("jpeg", {"quality": 75}), ("scaling", {"factor": 0.9}),
       ("scaling", {"factor": 1.1}), ("rotation", {"angle": 3.0})]
K = 3


@pytest.fixture(scope="module")
def world():
    transforms = {t.name: t for t in TRANSFORMS}
    ops = tuple(differentiable_operation(transforms[n], transforms[n].params(**p)) for n, p in OPS)
    model = tiny_model().module
    images, labels = digits()
    x = torch.from_numpy(images[1::2][:300]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels[1::2][:300])
    with torch.no_grad():
        top1 = model(x).argmax(1)
    x, top1 = x[top1 == y][:24], top1[top1 == y][:24]
    return model, ops, x, PaperCriterion(False, top1, None, k=1)


def ranking_changed(model, ops, images) -> torch.Tensor:
    """The planted detector: flags an image whose top-3 list (order included) changes under any
    operation, i.e. whose differences feature (§3.2.2) is not all zero."""
    return ~ranking_kept(model, ops, images, K)


def run(name, model, x, criterion, defense, **params):
    spec = SPECS[name]
    out = spec.run(model, x.clone(), criterion, spec.params(**params),
                   AttackContext(cache_dir=Path("/nonexistent"), device="cpu", seed=0, defense=defense))
    assert out.images.shape == x.shape and (out.images - x).abs().amax() <= params["epsilon"] + 1e-6
    return out


def evaded(model, ops, criterion, images) -> float:
    with torch.no_grad():
        fooled = criterion(model(images))
    return (fooled & ~ranking_changed(model, ops, images)).float().mean().item()


def test_ranking_hinge_is_zero_exactly_when_the_ranking_holds_by_the_margin():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0], [5.0, 3.0, 1.0, 0.0], [5.0, 4.5, 1.0, 0.0]])
    ranking = torch.tensor([[0, 1, 2], [1, 0, 2], [0, 1, 2]])
    hinge = ranking_hinge(logits, ranking, margin=1.0)
    assert hinge[0] == 0  # 5 > 3 > 1 > 0, each by 2 or more
    assert hinge[1] == pytest.approx(3.0)  # 3 - 5 = -2 short by 3; then 5 - 1 and 1 - 0 clear
    assert hinge[2] == pytest.approx(0.5)  # 5 - 4.5 = 0.5 short by 0.5
    assert softmax_kl(logits, logits).abs().max() < 1e-6 and (softmax_kl(logits[:1], logits[2:]) > 0).all()


def test_the_feature_level_attack_evades_a_ranking_detector_that_top1_eot_does_not(world):
    model, ops, x, criterion = world
    defense = Defense(kind="detector", name="planted-ranking", operations=ops,
                      flags=lambda z: ranking_changed(model, ops, z), top_k=K)
    with torch.no_grad():
        assert criterion(model(x)).float().mean() == 0  # clean: nothing to evade yet
    eot_ce = evaded(model, ops, criterion, run("eot-pgd", model, x, criterion, defense, epsilon=0.2, steps=60).images)
    eot_cw = evaded(model, ops, criterion, run("eot-pgd", model, x, criterion, defense, epsilon=0.2, steps=60,
                                               loss="cw", confidence=3.0).images)
    ranked = run("rank-eot", model, x, criterion, defense, epsilon=0.2, steps=60, eot_samples=2)
    rank = evaded(model, ops, criterion, ranked.images)
    # measured: EOT-PGD CE 0.33, CW (margin 3) 0.08, rank-eot 0.96 of 24 images
    assert rank >= 0.8 and max(eot_ce, eot_cw) <= 0.5 and rank - max(eot_ce, eot_cw) >= 0.4, (eot_ce, eot_cw, rank)
    assert torch.equal(ranked.per_image["evaded"].bool(), ~ranking_changed(model, ops, ranked.images)
                       & criterion(model(ranked.images)))


def test_gradient_attacks_start_from_the_warm_start(world):
    model, ops, x, criterion = world
    defense = Defense(kind="detector", name="never-flags", operations=ops, flags=lambda z: torch.zeros(len(z)).bool(),
                      detector_scores=lambda z: torch.zeros(len(z)), threshold=1.0, top_k=K)
    start = (x + 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    # no step taken: the first iterate, the warm start (inside the ball), is what comes back
    plain = eot_pgd(model, x, criterion, ops, norm="linf", epsilon=0.1, steps=0, rel_stepsize=0.1, restarts=1,
                    random_init=True, eot_samples=0, loss="ce", confidence=0.0, gen=torch.Generator(), start=start)
    assert torch.equal(plain.images, start)
    for name in ("eot-pgd", "rank-eot"):  # one step of 0.1 * epsilon at most from the start
        spec = SPECS[name]
        ctx = AttackContext(cache_dir=Path("/nonexistent"), seed=0, defense=defense, start=start)
        out = spec.run(model, x.clone(), criterion, spec.params(epsilon=0.1, steps=1), ctx).images
        assert spec.warm_start and (out - start).abs().amax() <= 0.01 + 1e-6, name
    # a start that already fools a system whose detector never fires: opgd and cw-joint stop there
    fooling = run("eot-pgd", model, x, criterion, defense, epsilon=0.2, steps=30).images
    with torch.no_grad():
        fooled = criterion(model(fooling))
    assert fooled.float().mean() >= 0.9
    for name in ("opgd", "cw-joint"):
        spec = SPECS[name]
        ctx = AttackContext(cache_dir=Path("/nonexistent"), seed=0, defense=defense, start=fooling)
        out = spec.run(model, x.clone(), criterion, spec.params(epsilon=0.2, steps=5, through_storage=False), ctx)
        assert spec.warm_start and torch.equal(out.images[fooled], fooling[fooled]), name
