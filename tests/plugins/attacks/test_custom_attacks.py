"""Tests for the hand-written attacks (L-BFGS, JSMA, ADef) on a tiny CNN trained on recoloured
scikit-learn digits (3x8x8, a couple of seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advbench_plugins.attacks.adef import adef_attack
from advbench_plugins.attacks.jsma import jsma_attack
from advbench_plugins.attacks.lbfgs import lbfgs_attack

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only contend

N = 16


class Crit:
    """Targeted: softmax(target) >= threshold; non-targeted: label not in the top-k."""

    def __init__(self, labels, targets=None, threshold=0.99, k=1):
        self.labels, self.targets, self.targeted = labels, targets, targets is not None
        self.threshold, self.k = threshold, k

    def __call__(self, logits):
        assert logits.shape[0] == len(self.labels)  # attacks must pass the whole batch
        if self.targeted:
            return logits.softmax(1).gather(1, self.targets[:, None]).squeeze(1) >= self.threshold
        return ~(logits.topk(self.k, 1).indices == self.labels[:, None]).any(1)


class Never(Crit):
    def __call__(self, logits):
        return torch.zeros(len(logits), dtype=torch.bool)




@pytest.fixture(scope="module")
def setup():
    datasets = pytest.importorskip("sklearn.datasets")
    torch.manual_seed(0)
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    # recolour: random ink colour on a random dark background, so values lie inside (0, 1)
    ink = torch.rand(len(x), 3, 1, 1, generator=g) * 0.6 + 0.4
    bg = torch.rand(len(x), 3, 1, 1, generator=g) * 0.2
    x = bg + (ink - bg) * x
    train = torch.arange(len(x)) % 5 != 0
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = x[train], y[train]
    for _ in range(8):
        for b in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    opt.zero_grad(set_to_none=True)  # params keep requires_grad: attacks must not touch .grad
    xs, ys = x[~train], y[~train]
    with torch.no_grad():
        pred = model(xs).argmax(1)
    assert (pred == ys).float().mean() > 0.9
    xs = xs[pred == ys][:N]
    labels = ys[pred == ys][:N]
    targets = (labels + 1 + torch.arange(N) % 9) % 10  # every other class, never the label
    return model, xs, labels, targets


def _check(model, xs, adv, crit):
    assert adv.shape == xs.shape and adv.dtype == xs.dtype
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        return crit(model(adv))


ATTACKS = {
    "lbfgs": lambda m, x, c: lbfgs_attack(m, x, c),
    "jsma": lambda m, x, c: jsma_attack(m, x, c),
    "adef": lambda m, x, c: adef_attack(m, x, c),
}


def test_lbfgs_targeted(setup):
    model, xs, labels, targets = setup
    crit = Crit(labels, targets, threshold=0.99)
    adv = lbfgs_attack(model, xs, crit)
    ok = _check(model, xs, adv, crit)
    assert ok.float().mean() >= 0.75
    # more search over c only ever keeps a smaller distortion (first round is identical)
    one = lbfgs_attack(model, xs, crit, binary_search_steps=1)
    d5, d1 = (adv - xs).flatten(1).norm(dim=1), (one - xs).flatten(1).norm(dim=1)
    assert (d5 <= d1 + 1e-5).all() and d5.sum() < d1.sum()


def test_lbfgs_untargeted_falls_back_to_runner_up(setup):
    model, xs, labels, _ = setup
    crit = Crit(labels)
    assert _check(model, xs, lbfgs_attack(model, xs, crit), crit).float().mean() >= 0.75


def test_jsma(setup):
    model, xs, labels, targets = setup
    crit = Crit(labels)
    adv = jsma_attack(model, xs, crit)  # gamma 0.1: at most 2 * floor(0.1 * 192 / 2) = 18 features
    assert _check(model, xs, adv, crit).float().mean() >= 0.5
    changed = (adv != xs).flatten(1)
    assert changed.sum(1).max() <= 18
    assert (adv.flatten(1)[changed] == 1).all()  # theta = +1 saturates the chosen features
    crit = Crit(labels, targets, threshold=0.5)
    adv = jsma_attack(model, xs, crit, gamma=0.2)
    assert _check(model, xs, adv, crit).float().mean() >= 0.75
    assert (adv != xs).flatten(1).sum(1).max() <= 38


@pytest.mark.parametrize("k", [1, 3])
def test_adef(setup, k):
    model, xs, labels, _ = setup
    crit = Crit(labels, k=k)
    adv = adef_attack(model, xs, crit)
    assert _check(model, xs, adv, crit).float().mean() >= 0.75
    # a deformation moves pixels, it does not add new intensities beyond the image's own range
    assert (adv.flatten(1).max(1).values <= xs.flatten(1).max(1).values + 1e-5).all()


@pytest.mark.parametrize("name", ATTACKS)
def test_failed_and_already_adversarial_rows(setup, name):
    model, xs, labels, targets = setup
    # an unreachable criterion: every row fails, output must still be a valid batch
    never = Never(labels, None if name == "adef" else targets)
    adv = ATTACKS[name](model, xs, never)
    _check(model, xs, adv, never)
    # rows adversarial from the start (label 'wrong' for half the batch) come back unchanged
    fake = labels.clone()
    fake[::2] = (fake[::2] + 1) % 10
    if name == "lbfgs":  # targeted: even rows' target is their own (confident) label
        crit = Crit(labels, torch.where(torch.arange(N) % 2 == 0, labels, targets), threshold=0.5)
    else:
        crit = Crit(fake)
    adv = ATTACKS[name](model, xs, crit)
    assert torch.allclose(adv[::2], xs[::2], atol=1e-5)


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic(setup, name):
    model, xs, labels, targets = setup
    crit = Crit(labels) if name == "adef" else Crit(labels, targets, threshold=0.9)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        with torch.no_grad():  # attacks enable gradients themselves
            outs.append(ATTACKS[name](model, xs, crit))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], xs)
    assert all(p.grad is None for p in model.parameters())
