"""HopSkipJump (Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient decision-based
attack", IEEE S&P 2020) on the decision of a whole defended system.

The attacker sees one bit per query: "adversarial against the system" (the classifier meets
the success rule and the detector does not flag the image). Each iteration (Algorithm 2):
a binary search to the decision boundary between the original image and the current
adversarial point (§4.2), a Monte-Carlo estimate of the boundary's normal from the signs of
``B_t = B_0 sqrt(t)`` random probes at radius ``δ_t`` (baseline-subtracted, eq. 16), and a
geometric step-size search along that direction (``ξ_t = ‖x_t - x*‖ / sqrt(t)``, halved until
the point is adversarial again). L2 (blend binary search, unit-norm direction) and L∞ (box
binary search, sign direction). Every decision counts as one query of the row it belongs to;
a row stops when its budget is spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from advbench_plugins.attacks.adaptive.common import Decision, l2_norms, rowwise


@dataclass(frozen=True)
class HSJResult:
    images: torch.Tensor
    queries: torch.Tensor  # (N,) decisions asked for each row
    found: torch.Tensor  # (N,) bool: a starting point the system calls adversarial was found
    iterations: torch.Tensor  # (N,) HSJ iterations completed
    distances: torch.Tensor  # (N,) norm distance of the returned image (inf where none found)


class _Oracle:
    """The decision, counting queries per row and refusing rows whose budget is spent."""

    def __init__(self, decide: Decision, n: int, budget: int, device):
        self.decide, self.budget = decide, budget
        self.queries = torch.zeros(n, dtype=torch.long, device=device)

    def remaining(self, rows: torch.Tensor) -> torch.Tensor:
        return self.budget - self.queries[rows]

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        return self.decide(x, rows).to(x.device)


def _distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    diff = (a - b).flatten(1)
    return diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)


def _between(x0: torch.Tensor, adv: torch.Tensor, alpha: torch.Tensor, norm: str) -> torch.Tensor:
    """L2: the blend ``(1-α) x0 + α adv``; L∞: ``adv`` clipped to the box of radius α around x0."""
    a = rowwise(alpha, x0)
    if norm == "linf":
        return torch.maximum(torch.minimum(adv, x0 + a), x0 - a)
    return (1 - a) * x0 + a * adv


def _bisect(oracle: _Oracle, x0: torch.Tensor, adv: torch.Tensor, rows: torch.Tensor, norm: str,
            theta: float) -> torch.Tensor:
    """Binary search (§4.2) between ``x0`` (not adversarial) and ``adv`` (adversarial): the point
    on the adversarial side once the interval is narrower than the threshold. L2 searches the
    blend fraction (threshold θ), L∞ the box radius (threshold min(θ·dist, θ))."""
    if norm == "linf":
        high = _distance(adv, x0, norm)
        width = torch.clamp(high * theta, max=theta)
    else:
        high = torch.ones(len(rows), device=x0.device)
        width = torch.full_like(high, theta)
    low = torch.zeros_like(high)
    while True:
        open_ = ((high - low) > width) & (oracle.remaining(rows) > 0)
        if not bool(open_.any()):
            break
        sel = open_.nonzero().squeeze(1)
        mid = (low[sel] + high[sel]) / 2
        ok = oracle(_between(x0[sel], adv[sel], mid, norm), rows[sel])
        high[sel] = torch.where(ok, mid, high[sel])
        low[sel] = torch.where(ok, low[sel], mid)
    return _between(x0, adv, high, norm)


#: probe images held at once by the gradient estimate (rows are taken in groups that fit)
PROBES_AT_ONCE = 4096


def _direction(oracle: _Oracle, boundary: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor, samples: int,
               norm: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo estimate of the boundary normal at ``boundary`` (eq. 16, baseline-subtracted)
    from up to ``samples`` sign queries per row (fewer when the budget is short). Returns the
    step direction (L2: unit norm; L∞: its sign) and which rows got at least one probe."""
    group = max(1, PROBES_AT_ONCE // max(1, samples))
    parts = [_direction_of_rows(oracle, boundary[i:i + group], rows[i:i + group], delta[i:i + group], samples, norm,
                                gen) for i in range(0, len(rows), group)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _direction_of_rows(oracle: _Oracle, boundary: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor,
                       samples: int, norm: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    per_row = torch.clamp(oracle.remaining(rows), max=samples)
    has = per_row > 0
    owner = torch.repeat_interleave(torch.arange(len(rows), device=boundary.device), per_row)
    if owner.numel() == 0:
        return torch.zeros_like(boundary), has
    shape = (len(owner), *boundary.shape[1:])
    probe = (torch.rand(shape, generator=gen) * 2 - 1) if norm == "linf" else torch.randn(shape, generator=gen)
    probe = probe.to(boundary.device, boundary.dtype)
    probe = probe / rowwise(l2_norms(probe).clamp_min(1e-12), probe)
    base, d = boundary[owner], rowwise(delta[owner], probe)
    perturbed = (base + d * probe).clamp(0, 1)
    probe = (perturbed - base) / d  # what was actually added, after clipping to the image range
    signs = oracle(perturbed, rows[owner]).float() * 2 - 1
    count = per_row.clamp_min(1).float()
    mean = torch.zeros(len(rows), device=boundary.device).index_add_(0, owner, signs) / count
    centred = signs - mean[owner]
    # all probes on one side: the baseline would cancel everything, use the raw signs (as §4.1)
    uniform = mean[owner].abs() == 1
    centred = torch.where(uniform, signs, centred)
    grad = torch.zeros_like(boundary).index_add_(0, owner, rowwise(centred, probe) * probe)
    grad = grad / rowwise(count, grad)
    if norm == "linf":
        return grad.sign(), has
    return grad / rowwise(l2_norms(grad).clamp_min(1e-12), grad), has


def _starting_points(oracle: _Oracle, x0: torch.Tensor, init_queries: int, from_batch: bool,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, a point the system calls adversarial: first the batch's other images (natural
    images of other classes, in a seeded random order), then uniform noise (the paper's
    initialisation), at most ``init_queries`` tries per row."""
    n = len(x0)
    start, found = x0.clone(), torch.zeros(n, dtype=torch.bool, device=x0.device)
    order = torch.randperm(n, generator=gen).to(x0.device)
    position = torch.empty_like(order)
    position[order] = torch.arange(n, device=x0.device)
    for attempt in range(init_queries):
        rows = (~found & (oracle.remaining(torch.arange(n, device=x0.device)) > 0)).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        if from_batch and attempt < n - 1:
            candidates = x0[order[(position[rows] + attempt + 1) % n]]
        else:
            candidates = torch.rand((len(rows), *x0.shape[1:]), generator=gen).to(x0.device, x0.dtype)
        ok = oracle(candidates, rows)
        start[rows[ok]] = candidates[ok]
        found[rows[ok]] = True
    return start, found


def hop_skip_jump(decide: Decision, images: torch.Tensor, *, norm: str, max_queries: int, iterations: int,
                  init_evals: int, max_evals: int, gamma: float, init_queries: int, init_from_batch: bool,
                  gen: torch.Generator) -> HSJResult:
    """HopSkipJump on ``decide(x, rows) -> bool`` (True = adversarial for batch row ``rows[i]``).

    ``gamma`` sets the binary-search threshold θ = γ / d^{3/2} (L2) or γ / d² (L∞) for d values
    per image, and the probe radius δ_t = sqrt(d)·θ·dist_{t-1} (L2) or d·θ·dist_{t-1} (L∞).
    Returns, per row, the adversarial point of smallest distance found (the clean image where no
    starting point was found within ``init_queries``)."""
    x0 = images.detach()
    n, d = len(x0), x0[0].numel()
    theta = gamma / (d * d) if norm == "linf" else gamma / (d * math.sqrt(d))
    oracle = _Oracle(decide, n, max_queries, x0.device)
    start, found = _starting_points(oracle, x0, min(init_queries, max_queries), init_from_batch, gen)
    best = x0.clone()
    best_dist = torch.full((n,), float("inf"), device=x0.device)
    done_iterations = torch.zeros(n, dtype=torch.long, device=x0.device)
    rows = found.nonzero().squeeze(1)
    if rows.numel() == 0:
        return HSJResult(best, oracle.queries, found, done_iterations, best_dist)
    current = _bisect(oracle, x0[rows], start[rows], rows, norm, theta)
    best[rows], best_dist[rows] = current, _distance(current, x0[rows], norm)
    for t in range(1, iterations + 1):
        live = oracle.remaining(rows) > 0
        rows, current = rows[live], current[live]
        if rows.numel() == 0:
            break
        dist = _distance(current, x0[rows], norm)
        delta = (d * theta * dist) if norm == "linf" else (math.sqrt(d) * theta * dist)
        samples = int(min(init_evals * math.sqrt(t), max_evals))
        direction, probed = _direction(oracle, current, rows, delta.clamp_min(1e-12), samples, norm, gen)
        # geometric step-size search: halve ξ until the step lands on the adversarial side
        xi = dist / math.sqrt(t)
        stepped = current.clone()
        pending = probed.clone()
        for _ in range(32):
            pending &= oracle.remaining(rows) > 0
            if not bool(pending.any()):
                break
            sel = pending.nonzero().squeeze(1)
            candidate = (current[sel] + rowwise(xi[sel], current) * direction[sel]).clamp(0, 1)
            ok = oracle(candidate, rows[sel])
            stepped[sel[ok]] = candidate[ok]
            pending[sel[ok]] = False
            xi[sel[~ok]] = xi[sel[~ok]] / 2
        current = _bisect(oracle, x0[rows], stepped, rows, norm, theta)
        done_iterations[rows] += 1
        new_dist = _distance(current, x0[rows], norm)
        closer = new_dist < best_dist[rows]
        best[rows[closer]], best_dist[rows[closer]] = current[closer], new_dist[closer]
    return HSJResult(best, oracle.queries, found, done_iterations, best_dist)
