"""The black-box attacks (Square, HopSkipJump, Boundary, spatial) on the tiny world: they find
adversarial examples within their query budgets and report honest per-image query counts."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from advbench.criteria import PaperCriterion
from advbench.specs import AttackOutput, BuildContext
from advbench.testing import check_attack, digits, tiny_model

from advbench_plugins.attacks.spatial import rotate_translate, spatial_grid
from advbench_plugins.attacks.square import margin_loss, pseudo_gaussian, square_fraction, square_pattern

D = 3 * 16 * 16  # values per tiny-world image


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors: extra threads only add contention on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_batch(n: int, k: int = 2):
    """n tiny-world images as check_attack picks them, with the paper's non-targeted top-k rule."""
    model = tiny_model().module
    images, _ = digits()
    x = torch.from_numpy(images[1::2][:n]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top1 = model(x).argmax(1)
    return model, x, PaperCriterion(False, top1, None, k=k, threshold=0.9)


def run(spec, params, n: int = 8, k: int = 2, seed: int = 0, tmp: Path | None = None, model=None):
    base, x, criterion = tiny_batch(n, k)
    model = model or base
    ctx = BuildContext(cache_dir=tmp or Path("/nonexistent-cache"), device="cpu", seed=seed)
    out = spec.run(model, x.clone(), criterion, params, ctx)
    with torch.no_grad():
        ok = criterion(base(out.images if isinstance(out, AttackOutput) else out))
    return x, out, ok


class Unwrapped:
    """The spec with ``run`` returning the bare images, as ``check_attack`` expects; keeps the
    per-image values of the last call."""

    def __init__(self, spec):
        self.per_image = {}

        def bare(*args):
            out = spec.run(*args)
            assert isinstance(out, AttackOutput), f"{spec.name} should return an AttackOutput"
            self.per_image = dict(out.per_image)
            return out.images

        self.spec = dataclasses.replace(spec, run=bare)


# --- Square Attack -------------------------------------------------------------------------


def test_square_schedule_halves_at_the_papers_iterations():
    assert square_fraction(0.05, 10, 10_000) == 0.05
    assert square_fraction(0.05, 11, 10_000) == 0.025
    assert square_fraction(0.05, 500, 10_000) == 0.05 / 8
    assert square_fraction(0.05, 9_999, 10_000) == 0.05 / 512
    # other budgets: iteration numbers rescaled to 10,000 queries
    assert square_fraction(0.1, 1, 1_000) == 0.1  # 10 of 10,000
    assert square_fraction(0.1, 2, 1_000) == 0.05  # 20
    assert square_fraction(0.1, 999, 1_000) == 0.1 / 512


def test_square_patterns():
    g = pseudo_gaussian(5, 5)
    assert math.isclose(g.norm().item(), 1.0, rel_tol=1e-6)
    assert g[2, 2] == g.max() and torch.allclose(g, g.flip(0)) and torch.allclose(g, g.T)
    # the ring sums: centre 1 + 1/4 + 1/9, the corner ring 1/9 only
    assert math.isclose((g[2, 2] / g[0, 0]).item(), (1 + 1 / 4 + 1 / 9) / (1 / 9), rel_tol=1e-5)
    w = square_pattern(7)
    assert w.shape == (7, 7) and math.isclose(w.norm().item(), 1.0, rel_tol=1e-6)
    assert (w[:3] > 0).all() and (w[3:] < 0).all()


def test_margin_loss_follows_the_top_k_rule():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0])
    assert margin_loss(logits, labels, 1).tolist() == [1.0, -2.0]
    assert margin_loss(logits, labels, 2).tolist() == [2.0, -1.0]  # row 1: label third, out of the top 2


# budgets with room to spare: the cached tiny model differs slightly with the torch threads it was
# trained under (another test module may have built it first), and these must pass for either
@pytest.mark.parametrize("name, params", [("square-linf", {"epsilon": 0.3, "max_queries": 600}),
                                          ("square-l2", {"epsilon": 0.2, "max_queries": 600})])
def test_square_finds_adversarial_examples_within_budget(registry, name, params):
    spec = registry.get("attack", name)
    assert (spec.threat, spec.budget_param, spec.norm) == ("score-based", "epsilon", name.split("-")[1])
    wrapped = Unwrapped(spec)
    check_attack(wrapped.spec, spec.params(**params), n=12, min_success=0.75)
    queries = wrapped.per_image["queries"]
    assert queries.shape == (12,) and queries.dtype == torch.long
    assert (queries >= 1).all() and (queries <= params["max_queries"]).all()
    # rows stop once the criterion holds: successes are cheaper than the budget on average
    assert queries.float().mean() < params["max_queries"]


@pytest.mark.parametrize("name, eps", [("square-linf", 0.3), ("square-l2", 0.2)])
def test_square_stays_in_the_ball_and_the_search_matters(registry, name, eps):
    spec = registry.get("attack", name)
    x, out, ok = run(spec, spec.params(epsilon=eps, max_queries=400), n=8)
    delta = (out.images - x).flatten(1)
    bound = delta.abs().amax(1) if name == "square-linf" else delta.norm(dim=1) / math.sqrt(D)
    assert (bound <= eps + 1e-5).all()
    assert (out.images >= 0).all() and (out.images <= 1).all()
    queries = out.per_image["queries"]
    assert (queries[~ok] == 400).all()  # a failed row spends the whole budget
    assert ok.float().mean() >= 0.6
    # the init alone (one query) finds little: the random search does the work
    _, init, init_ok = run(spec, spec.params(epsilon=eps, max_queries=1), n=8)
    assert init_ok.float().mean() <= 0.25 and (init.per_image["queries"] == 1).all()


def test_square_is_deterministic_per_seed(registry):
    spec = registry.get("attack", "square-linf")
    params = spec.params(epsilon=0.2, max_queries=50)
    a = run(spec, params, n=4, seed=1)[1]
    b = run(spec, params, n=4, seed=1)[1]
    c = run(spec, params, n=4, seed=2)[1]
    assert torch.equal(a.images, b.images) and torch.equal(a.per_image["queries"], b.per_image["queries"])
    assert not torch.equal(a.images, c.images)


def test_square_targeted_uses_the_criterion(registry):
    spec = registry.get("attack", "square-linf")
    model, x, untargeted = tiny_batch(6)
    targets = (untargeted.labels + 3) % 10
    criterion = PaperCriterion(True, untargeted.labels, targets, threshold=0.5)
    out = spec.run(model, x, criterion, spec.params(epsilon=0.3, max_queries=800), BuildContext(cache_dir=Path(".")))
    with torch.no_grad():
        ok = criterion(model(out.images))
    assert ok.float().mean() >= 0.5
    assert (out.per_image["queries"] <= 800).all()


# --- HopSkipJump, Boundary -------------------------------------------------------------------


def test_hopskipjump_finds_adversarial_examples_within_budget(registry):
    spec = registry.get("attack", "hopskipjump")
    assert (spec.threat, spec.budget_param, spec.norm) == ("decision-based", "max_norm", "l2")
    wrapped = Unwrapped(spec)
    check_attack(wrapped.spec, spec.params(max_queries=300), n=8, min_success=0.9)
    queries = wrapped.per_image["queries"]
    assert (queries <= 300).all() and (queries >= 250).all()  # minimal-norm: it spends the budget


def test_hopskipjump_gets_closer_with_more_queries(registry):
    spec = registry.get("attack", "hopskipjump")
    x, short, ok_short = run(spec, spec.params(max_queries=200), n=6)
    _, long, ok_long = run(spec, spec.params(max_queries=1200), n=6)
    assert ok_short.all() and ok_long.all()
    d_short = (short.images - x).flatten(1).norm(dim=1)
    d_long = (long.images - x).flatten(1).norm(dim=1)
    assert (d_long <= d_short + 1e-6).all() and d_long.median() < 0.8 * d_short.median()
    assert (long.per_image["queries"] <= 1200).all()


def test_hopskipjump_linf(registry):
    spec = registry.get("attack", "hopskipjump-linf")
    assert spec.norm == "linf"
    x, out, ok = run(spec, spec.params(max_queries=300), n=4)
    assert ok.all() and (out.per_image["queries"] <= 300).all()


def test_boundary_end_to_end(registry):
    spec = registry.get("attack", "boundary")
    assert (spec.threat, spec.budget_param, spec.norm) == ("decision-based", "max_norm", "l2")
    x, out, ok = run(spec, spec.params(max_queries=400), n=4)
    assert ok.all() and (out.per_image["queries"] <= 400).all()
    assert torch.isfinite(out.images).all() and (out.images >= 0).all() and (out.images <= 1).all()
    # the walk moved towards the clean images, away from the blended-noise starts
    _, start, _ = run(spec, spec.params(max_queries=20, init_search_steps=10), n=4)
    d = lambda o: (o.images - x).flatten(1).norm(dim=1)  # noqa: E731
    assert (d(out) < d(start)).all()


def test_decision_attack_without_a_start_fails_cleanly(registry):
    """No noise or other image is adversarial under an impossible rule: every row stays clean,
    charged exactly the noise draws and the batch's other images it was given."""
    spec = registry.get("attack", "hopskipjump")
    model, x, _ = tiny_batch(3)

    class Never:
        targeted, labels, targets = False, torch.zeros(3, dtype=torch.long), None

        def __call__(self, logits):
            assert len(logits) == 3
            return torch.zeros(len(logits), dtype=torch.bool)

    out = spec.run(model, x, Never(), spec.params(init_directions=7), BuildContext(cache_dir=Path(".")))
    assert torch.equal(out.images, x)
    assert out.per_image["queries"].tolist() == [7 + 2, 7 + 2, 7 + 2]


# --- spatial -------------------------------------------------------------------------------


def test_rotate_translate_matches_exact_pixel_moves():
    x = torch.rand(2, 3, 6, 6)
    turned = rotate_translate(x, 90.0, 0.0, 0.0)
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, -1))
    shifted = rotate_translate(x, 0.0, 2.0, -1.0)  # 2 right, 1 up, zeros come in
    assert torch.allclose(shifted[:, :, :5, 2:], x[:, :, 1:, :4], atol=1e-6)
    assert shifted[:, :, :, :2].abs().max() < 1e-5 and shifted[:, :, 5].abs().max() < 1e-5


def test_spatial_grid_is_ordered_smallest_first():
    grid = spatial_grid(30.0, 31, 3.0, 5)
    assert len(grid) == 31 * 5 * 5 - 1 and (0.0, 0.0, 0.0) not in grid
    size = [(a / 30) ** 2 + (dx * dx + dy * dy) / 9 for a, dx, dy in grid]
    assert size == sorted(size)
    assert grid[-1][0] in (-30.0, 30.0) and abs(grid[-1][1]) == 3.0


def test_spatial_end_to_end(registry):
    spec = registry.get("attack", "spatial")
    assert (spec.threat, spec.norm, spec.budget_param) == ("decision-based", "", "")
    params = spec.params(max_angle=30.0, n_angles=7, max_shift=2.0, n_shifts=3)
    x, out, ok = run(spec, params, n=6)
    assert ok.float().mean() >= 0.5
    grid = spatial_grid(30.0, 7, 2.0, 3)
    queries = out.per_image["queries"]
    for i in range(len(x)):
        if ok[i]:  # the first accepted grid point, so the queries name it
            expected = rotate_translate(x[i:i + 1], *grid[int(queries[i]) - 1]).clamp(0, 1)
            assert torch.allclose(out.images[i:i + 1], expected, atol=1e-6)
        else:
            assert queries[i] == len(grid) and torch.equal(out.images[i], x[i])


def test_start_search_falls_back_on_other_images():
    """A classifier that puts all uniform noise in one class: rows of that class find their start
    in another image of the batch, blended back to just past the boundary."""
    from advbench_plugins.attacks.decision import QueryCounter, Tracker, blended_noise_start

    class Brightness(torch.nn.Module):  # class 0 iff the mean value is above 0.7
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([m - 0.7, 0.7 - m], 1)

    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.2, 0.9)])
    criterion = PaperCriterion(False, torch.tensor([1, 1, 0]), None, k=1)
    counter = QueryCounter(Brightness(), 3, budget=None)
    tracker = Tracker(criterion, images, "l2")
    starts = blended_noise_start(counter, tracker, images, directions=5, search_steps=12,
                                 generator=torch.Generator().manual_seed(0))
    assert tracker.found.all() and criterion(Brightness()(starts)).all()
    # rows 0 and 1 blend towards the bright image: just past mean 0.7
    means = starts.flatten(1).mean(1)
    assert ((means[:2] > 0.7) & (means[:2] < 0.701)).all()
    # noise (mean ~0.5) is adversarial for row 2 at once; rows 0 and 1 used all 5 draws, then
    # their nearest neighbour (the other dark image, no), then the bright one; then the search
    assert counter.queries.tolist() == [5 + 2 + 12, 5 + 2 + 12, 1 + 12]
