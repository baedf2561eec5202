"""Square Attack: a score-based black-box attack by random search, L∞ and L2.

M. Andriushchenko, F. Croce, N. Flammarion, M. Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (arXiv:1912.00049), Algorithms 1-3.

Each step changes the current best perturbation on one random square window (two for L2) and
keeps the change when the loss drops. The side of the square follows the paper's schedule: a
fraction ``p`` of the image's pixels, ``p_init`` halved after 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of 10,000 queries (iteration numbers rescaled to other budgets).

- L∞ (Alg. 2): initialised with vertical stripes of width one (+-eps per column and channel);
  a step sets the window, per channel, to +eps or -eps around the clean image.
- L2 (Alg. 3): initialised with a 5x5 grid of windows, each holding the paper's pseudo-Gaussian
  pattern (two halves of opposite sign) with a random sign per channel, scaled to norm eps; a
  step moves the perturbation's mass from a second window into the first (which receives a fresh
  pattern), keeping the total norm at eps.

Losses, as in the paper: the margin (logit of the original label minus the largest other) for
non-targeted attacks, the cross-entropy towards the target for targeted ones. The benchmark's
``criterion`` decides success, not the paper's top-1 rule: a row stops only once it holds.
Under a top-k rule (``criterion.k``, when the criterion has one) the margin is taken to the
k-th largest other logit, which is negative exactly when the label has left the top k; k = 1
is the paper's margin. A step that makes the criterion hold is kept even when the loss does not
drop. All rows of a batch step together; random draws come from one generator seeded with the
context's seed, so a row's result depends on its batch (the draws are shared).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: the paper's schedule for a 10,000-query budget: p is halved after each of these iterations
HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
REFERENCE_BUDGET = 10_000


def square_fraction(p_init: float, iteration: int, max_queries: int) -> float:
    """Fraction of pixels in the square at ``iteration`` (0-based, after the init query): the
    paper's halvings at its iteration numbers, rescaled from 10,000 queries to ``max_queries``."""
    it = int(iteration / max_queries * REFERENCE_BUDGET)
    return p_init / 2 ** sum(it > h for h in HALVING_ITERATIONS)


def pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    """The paper's centred pattern (§3.2, L2): ``sum_{j=d}^{m-1} 1/(j+1)^2`` at Chebyshev distance
    ``d`` from the centre, ``m`` rings in all; unit L2 norm."""
    ch, cw = rows // 2, cols // 2
    rings = max(ch, cw) + 1
    tail = (1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    d = torch.maximum((torch.arange(rows)[:, None] - ch).abs(), (torch.arange(cols)[None, :] - cw).abs())
    pattern = tail[d]
    return (pattern / pattern.norm()).float()


def square_pattern(side: int) -> torch.Tensor:
    """A window's pattern: two pseudo-Gaussian halves (top positive, bottom negative), unit norm."""
    top = side // 2
    halves = [-pseudo_gaussian(side - top, side)]
    if top:
        halves.insert(0, pseudo_gaussian(top, side))
    pattern = torch.cat(halves, 0)
    return pattern / pattern.norm()


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Logit of ``labels`` minus the k-th largest other logit: < 0 iff the label left the top k."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    k = max(1, min(k, logits.shape[1] - 1))
    return true - others.topk(k, dim=1).values[:, -1]


def square_loss(criterion) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, rows)`` to minimise: CE towards the target (targeted) or the margin."""
    if criterion.targeted:
        targets = criterion.targets
        return lambda logits, rows: F.cross_entropy(logits.float(), targets.to(logits.device)[rows], reduction="none")
    labels, k = criterion.labels, int(getattr(criterion, "k", 1) or 1)
    return lambda logits, rows: margin_loss(logits.float(), labels.to(logits.device)[rows], k)


def _window_mask(n: int, side: int, shape: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) bool: True inside each row's side x side window at (top, left)."""
    h, w = shape
    rows = torch.arange(h, device=top.device)[None, :]
    cols = torch.arange(w, device=top.device)[None, :]
    inside_h = (rows >= top[:, None]) & (rows < top[:, None] + side)
    inside_w = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (inside_h[:, :, None] & inside_w[:, None, :])[:, None]


def _place(patterns: torch.Tensor, shape: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Put each row's (s, s) pattern at (top, left) of an all-zero (n, 1, H, W) canvas."""
    n, side = len(patterns), patterns.shape[-1]
    canvas = patterns.new_zeros(n, *shape)
    offsets = torch.arange(side, device=patterns.device)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    canvas[torch.arange(n, device=patterns.device)[:, None, None], rows, cols] = patterns
    return canvas[:, None]


class _Draws:
    """Random numbers from one CPU generator (device-independent results), moved to ``device``."""

    def __init__(self, seed: int, device: torch.device):
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device

    def signs(self, *shape: int) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=self.gen) * 2 - 1).float().to(self.device)

    def positions(self, n: int, high: int) -> torch.Tensor:
        """n integers uniform in 0..high."""
        return torch.randint(0, high + 1, (n,), generator=self.gen).to(self.device)

    def coins(self, n: int) -> torch.Tensor:
        return (torch.rand(n, generator=self.gen) < 0.5).to(self.device)


def _patterns(side: int, transpose: torch.Tensor) -> torch.Tensor:
    """(n, s, s): the window pattern, transposed where ``transpose`` (the paper's random flip)."""
    pattern = square_pattern(side).to(transpose.device)
    return torch.where(transpose[:, None, None], pattern.T, pattern)


# --- L∞ ---------------------------------------------------------------------------------------


def linf_init(x: torch.Tensor, eps: float, draws: _Draws) -> torch.Tensor:
    """Vertical stripes: one random sign per row, channel and image column (Alg. 2, line 2)."""
    n, c, _, w = x.shape
    return (x + eps * draws.signs(n, c, 1, w)).clamp(0, 1)


def linf_step(x: torch.Tensor, best: torch.Tensor, eps: float, p: float, draws: _Draws) -> torch.Tensor:
    """One proposal per row: a random window set to clean +-eps per channel (Alg. 2, lines 5-8);
    signs are redrawn for rows whose window would not change."""
    n, c, h, w = x.shape
    side = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1) if min(h, w) > 1 else 1
    mask = _window_mask(n, side, (h, w), draws.positions(n, h - side), draws.positions(n, w - side))
    signs = draws.signs(n, c, 1, 1)
    for _ in range(16):  # 2^-c chance per try that every channel repeats the current window
        proposal = torch.where(mask, (x + eps * signs).clamp(0, 1), best)
        same = ((proposal - best).abs() < 1e-7).flatten(1).all(1)
        if not same.any():
            break
        signs = torch.where(same[:, None, None, None], draws.signs(n, c, 1, 1), signs)
    return proposal


# --- L2 ---------------------------------------------------------------------------------------


def l2_init(x: torch.Tensor, eps: float, draws: _Draws) -> torch.Tensor:
    """A 5x5 grid of windows of side min(H, W) // 5, each with the pseudo-Gaussian pattern and a
    random sign per channel, scaled to L2 norm eps (Alg. 3, line 2)."""
    n, c, h, w = x.shape
    side = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x)
    top0, left0 = max((h - 5 * side) // 2, 0), max((w - 5 * side) // 2, 0)
    for i in range(5):
        for j in range(5):
            top, left = top0 + i * side, left0 + j * side
            if top + side > h or left + side > w:
                continue
            pattern = _patterns(side, draws.coins(n))[:, None]  # (n, 1, s, s)
            delta[:, :, top:top + side, left:left + side] += pattern * draws.signs(n, c, 1, 1)
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x + delta / norm * eps).clamp(0, 1)


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum((2, 3), keepdim=True).sqrt()


def l2_step(x: torch.Tensor, best: torch.Tensor, eps: float, p: float, draws: _Draws) -> torch.Tensor:
    """One proposal per row (Alg. 3, lines 5-12): window W1 gets a fresh pattern (random sign per
    channel) plus its old content, rescaled per channel to take up the norm of W1 and W2 and any
    budget left unused; W2 is emptied; the whole perturbation is rescaled to norm eps."""
    n, c, h, w = x.shape
    side = max(int(round(math.sqrt(p * h * w))), 3)
    side += 1 - side % 2  # odd, as in the paper's reference
    side = min(side, min(h, w))
    where1 = (draws.positions(n, h - side), draws.positions(n, w - side))
    where2 = (draws.positions(n, h - side), draws.positions(n, w - side))
    in1 = _window_mask(n, side, (h, w), *where1)
    in_either = in1 | _window_mask(n, side, (h, w), *where2)
    delta = best - x
    norm_image = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    norm_w1, norm_both = _channel_norm(delta * in1), _channel_norm(delta * in_either)
    fresh = _place(_patterns(side, draws.coins(n)), (h, w), *where1) * draws.signs(n, c, 1, 1)
    update = fresh + delta * in1 / (norm_w1 + 1e-10)
    budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_both**2).sqrt()
    update = update / _channel_norm(update).clamp_min(1e-12) * budget
    delta = torch.where(in_either, update, delta)
    delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * eps
    return (x + delta).clamp(0, 1)


# --- the search -------------------------------------------------------------------------------


def square_attack(model, images: torch.Tensor, criterion, *, norm: str, eps: float, max_queries: int,
                  p_init: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Square Attack; returns the best images (N, C, H, W) and the model evaluations
    spent on each row (N,), the init included. ``eps`` is the absolute L∞ or L2 radius."""
    init, step = {"linf": (linf_init, linf_step), "l2": (l2_init, l2_step)}[norm]
    x = images.detach()
    n = len(x)
    draws = _Draws(seed, x.device)
    loss_of = square_loss(criterion)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    with torch.no_grad():
        best = init(x, eps, draws)
        logits = model(best)
        queries += 1
        everyone = torch.arange(n, device=x.device)
        loss = loss_of(logits, everyone)
        done = criterion(logits).to(x.device)
        for iteration in range(max_queries - 1):
            rows = (~done).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            p = square_fraction(p_init, iteration, max_queries)
            proposal = step(x[rows], best[rows], eps, p, draws)
            new_logits = model(proposal)
            queries[rows] += 1
            # the criterion is defined on the whole batch: judge the proposals in place
            trial = logits.clone()
            trial[rows] = new_logits
            holds = criterion(trial).to(x.device)[rows]
            new_loss = loss_of(new_logits, rows)
            take = holds | (new_loss < loss[rows])
            kept = rows[take]
            best[kept] = proposal[take]
            logits[kept] = new_logits[take]
            loss[kept] = new_loss[take]
            done[kept] = holds[take]
    return best, queries
