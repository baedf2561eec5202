"""Attack budgets: every attack declares its budget parameter, norm and threat; parameters are
validated; max_norm clips minimal-perturbation attacks; their unbounded run is memoised."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from advbench.config import parse_benchmark
from advbench.criteria import PaperCriterion
from advbench.errors import ConfigError
from advbench.specs import AttackOutput, BuildContext
from advbench.testing import digits, tiny_benchmark, tiny_model

from advbench_plugins.attacks.budgets import clip_to_ball

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only contend

SWEEPS = {"fgsm": "linf", "gradient": "l2", "bim": "linf", "pgd": "linf", "l1-iter": "l1", "l2-iter": "l2"}
MINIMAL = {"deepfool": "l2", "cw": "l2", "newtonfool": "l2", "lbfgs": "l2", "hopskipjump": "l2",
           "hopskipjump-linf": "linf", "boundary": "l2"}




def test_every_attack_declares_budget_norm_and_threat(registry):
    for name in registry.names("attack"):
        spec = registry.get("attack", name)
        assert spec.norm in ("linf", "l2", "l1", "l0", ""), name
        assert spec.threat in ("white-box", "score-based", "decision-based"), name
        assert spec.budget_param == "" or spec.budget_param in spec.params.model_fields, name
    for name, norm in SWEEPS.items():
        assert (registry.get("attack", name).budget_param, registry.get("attack", name).norm) == ("epsilons", norm)
    for name, norm in MINIMAL.items():
        spec = registry.get("attack", name)
        assert (spec.budget_param, spec.norm) == ("max_norm", norm), name
        assert spec.params().max_norm is None
    assert (registry.get("attack", "jsma").norm, registry.get("attack", "adef").norm) == ("l0", "")


@pytest.mark.parametrize("name", sorted(SWEEPS))
@pytest.mark.parametrize("bad", [[], [0.01, -0.1], [0.0]])
def test_epsilons_must_be_a_nonempty_list_of_positive_values(registry, name, bad):
    with pytest.raises(ValidationError):
        registry.get("attack", name).params(epsilons=bad)


@pytest.mark.parametrize("name, key", [("square-linf", "epsilon"), ("square-l2", "epsilon"),
                                       *((m, "max_norm") for m in MINIMAL)])
def test_scalar_budgets_must_be_positive(registry, name, key):
    params = registry.get("attack", name).params
    for bad in (0, -0.5):
        with pytest.raises(ValidationError):
            params(**{key: bad})


def test_validate_reports_bad_budgets_one_line_each(registry):
    toml = tiny_benchmark(attacks=['plugin = "fgsm"\nepsilons = []', 'plugin = "pgd"\nepsilons = [0.1, -0.2]',
                                   'plugin = "deepfool"\nmax_norm = 0'])
    with pytest.raises(ConfigError) as err:
        parse_benchmark(toml, registry)
    problems = "\n".join(err.value.problems)
    assert "attacks[0].epsilons" in problems and "at least 1 item" in problems
    assert "attacks[1].epsilons" in problems and "every budget must be > 0, found -0.2" in problems
    assert "attacks[2].max_norm" in problems


def test_clip_to_ball():
    clean = torch.full((3, 3, 4, 4), 0.5)
    adv = clean + torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    adv = adv.clamp(0, 1)
    for norm, p in (("l2", 2), ("l1", 1)):
        out = clip_to_ball(clean, adv, norm, 0.4)
        sizes = (out - clean).flatten(1).norm(p=p, dim=1)
        assert (sizes <= 0.4 + 1e-5).all() and torch.allclose(sizes, torch.full((3,), 0.4), atol=1e-5)
        # already inside the ball: unchanged (shrinks, never grows)
        assert torch.allclose(clip_to_ball(clean, adv, norm, 1e3), adv)
    out = clip_to_ball(clean, adv, "linf", 0.1)
    assert (out - clean).abs().max() <= 0.1 + 1e-6


class Counting(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


def _attack(spec, params, model, x, criterion, tmp_path, seed=0):
    return spec.run(model, x.clone(), criterion, params, BuildContext(cache_dir=tmp_path, device="cpu", seed=seed))


@pytest.fixture()
def batch():
    model = tiny_model().module
    images, _ = digits()
    x = torch.from_numpy(images[1::2][:6]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top1 = model(x).argmax(1)
    return Counting(model).eval(), x, PaperCriterion(False, top1, None, k=2, threshold=0.9)


def test_max_norm_clips_and_clipped_rows_may_fail(registry, batch, tmp_path):
    model, x, criterion = batch
    spec = registry.get("attack", "deepfool")
    free = _attack(spec, spec.params(), model, x, criterion, tmp_path)
    free_size = (free - x).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())
    with torch.no_grad():
        assert criterion(model.module(free)).all()
    budget = float(free_size.median())
    bounded = _attack(spec, spec.params(max_norm=budget), model, x, criterion, tmp_path)
    size = (bounded - x).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())
    assert (size <= budget + 1e-5).all()
    inside = free_size <= budget
    assert torch.allclose(bounded[inside], free[inside])  # rows already inside are kept as they are
    with torch.no_grad():
        ok = criterion(model.module(bounded))
    assert ok[inside].all() and not ok[~inside].all()  # a clipped DeepFool point falls short of the boundary


def test_unbounded_run_is_memoised_across_budgets(registry, batch, tmp_path):
    model, x, criterion = batch
    spec = registry.get("attack", "deepfool")
    first = _attack(spec, spec.params(max_norm=0.5), model, x, criterion, tmp_path)
    assert model.calls > 0 and len(list((tmp_path / "unbounded").glob("deepfool-*.pt"))) == 1
    model.calls = 0
    second = _attack(spec, spec.params(max_norm=0.05), model, x, criterion, tmp_path)
    assert model.calls == 0  # the second budget loads the unbounded run
    unbounded = _attack(spec, spec.params(), model, x, criterion, tmp_path)  # max_norm None: a plain run
    assert model.calls > 0
    assert torch.allclose(second, clip_to_ball(x, unbounded, "l2", 0.05 * math.sqrt(x[0].numel())))
    assert torch.allclose(first, clip_to_ball(x, unbounded, "l2", 0.5 * math.sqrt(x[0].numel())))
    # anything the unbounded run depends on gives a new run: parameters, seed, batch, labels
    for params, seed, images, crit in [
        (spec.params(max_norm=0.5, steps=20), 0, x, criterion),
        (spec.params(max_norm=0.5), 1, x, criterion),
        (spec.params(max_norm=0.5), 0, x.flip(0), criterion),
        (spec.params(max_norm=0.5), 0, x, PaperCriterion(False, criterion.labels.roll(1), None, k=2)),
    ]:
        model.calls = 0
        _attack(spec, params, model, images, crit, tmp_path, seed=seed)
        assert model.calls > 0


def test_memoised_decision_attack_keeps_its_queries(registry, batch, tmp_path):
    model, x, criterion = batch
    spec = registry.get("attack", "hopskipjump")
    first = _attack(spec, spec.params(max_queries=60, max_norm=1.0), model, x, criterion, tmp_path)
    model.calls = 0
    second = _attack(spec, spec.params(max_queries=60, max_norm=0.01), model, x, criterion, tmp_path)
    assert model.calls == 0
    assert isinstance(second, AttackOutput) and torch.equal(first.per_image["queries"], second.per_image["queries"])
    assert ((second.images - x).flatten(1).norm(dim=1) <= 0.01 * math.sqrt(x[0].numel()) + 1e-5).all()


def test_a_damaged_memo_is_recomputed(registry, batch, tmp_path):
    model, x, criterion = batch
    spec = registry.get("attack", "deepfool")
    first = _attack(spec, spec.params(max_norm=0.5), model, x, criterion, tmp_path)
    (entry,) = (tmp_path / "unbounded").glob("*.pt")
    entry.write_bytes(b"not a checkpoint")
    model.calls = 0
    with pytest.warns(UserWarning, match=f"rebuilding the deepfool memo: {entry} is damaged"):
        again = _attack(spec, spec.params(max_norm=0.5), model, x, criterion, tmp_path)
    assert model.calls > 0 and torch.allclose(first, again)
    assert Path(entry).stat().st_size > 100  # rewritten
