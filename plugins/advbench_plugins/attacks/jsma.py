"""Jacobian-based Saliency Map Attack (JSMA).

N. Papernot, P. McDaniel, S. Jha, M. Fredrikson, Z. B. Celik, A. Swami, "The Limitations of
Deep Learning in Adversarial Settings", IEEE EuroS&P 2016 (arXiv:1511.07528), Algorithms 2-3.

Each iteration computes the forward derivative of the logits, scores every pair of features
(p, q) still in the search domain by ``alpha * |beta|`` where ``alpha`` is the pair's gradient
of the target logit and ``beta`` that of the sum of the other logits (pairs need
``alpha > 0`` and ``beta < 0``), then moves both features by ``theta`` and drops features
that reach the box bound. Every channel-pixel of an (N, 3, H, W) image is one feature. At most
``floor(gamma * n_features / 2)`` iterations are made (two features per iteration).

Deviation for large inputs: the exact pair search is O(n^2); it is run over the ``_POOL``
features with the best single-feature score ``alpha - beta`` (exact when n <= ``_POOL``).
"""

from __future__ import annotations

import math

import torch

_POOL = 512  # features entering the pairwise search (pair matrix is _POOL**2 per image)


def jsma_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    criterion,
    *,
    theta: float = 1.0,
    gamma: float = 0.1,
    max_iterations: int | None = None,
) -> torch.Tensor:
    """Targeted JSMA; non-targeted criteria (``targets is None``) aim at each image's second
    most likely class. Stops per row as soon as ``criterion`` holds for it."""
    shape = images.shape
    x = images.detach().flatten(1).clone()
    n, nfeat = x.shape
    if max_iterations is None:
        max_iterations = int(math.floor(gamma * nfeat / 2))
    with torch.no_grad():
        logits0 = model(images.detach())
    full = logits0.clone()
    if criterion.targets is not None:
        target = criterion.targets.to(x.device)
    else:  # non-targeted: the runner-up class is the nearest one to push up
        target = logits0.topk(2, dim=1).indices[:, 1]

    sign = 1.0 if theta >= 0 else -1.0
    # search domain: features that can still move in the direction of theta
    domain = x < 1 if sign > 0 else x > 0
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    pool = min(_POOL, nfeat)
    eye = torch.eye(pool, dtype=torch.bool, device=x.device)

    for it in range(max_iterations + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        with torch.enable_grad():
            xi = x[idx].clone().requires_grad_(True)
            logits = model(xi.view(-1, *shape[1:]))
            t = target[idx]
            z_t = logits.gather(1, t[:, None]).sum()
            # two backward passes give alpha and beta without the full Jacobian
            (g_t,) = torch.autograd.grad(z_t, xi, retain_graph=True)
            (g_all,) = torch.autograd.grad(logits.sum(), xi)
        # the criterion is defined on the whole batch: refresh this batch's rows and index back
        full[idx] = logits.detach()
        done = criterion(full).to(x.device)[idx]
        if it == max_iterations:  # last pass only checks the criterion
            active[idx] = False
            break
        a = g_t * sign
        b = (g_all - g_t) * sign
        dom = domain[idx]

        # restrict the pair search to the most promising single features
        single = torch.where(dom, a - b, torch.full_like(a, -float("inf")))
        cand = single.topk(pool, dim=1).indices
        ap, bp, vp = a.gather(1, cand), b.gather(1, cand), dom.gather(1, cand)
        A = ap[:, :, None] + ap[:, None, :]
        B = bp[:, :, None] + bp[:, None, :]
        ok = (A > 0) & (B < 0) & vp[:, :, None] & vp[:, None, :] & ~eye
        score = torch.where(ok, A * -B, torch.full_like(A, -1.0)).flatten(1)
        best = score.argmax(1)
        found = ok.flatten(1).gather(1, best[:, None]).squeeze(1)
        p = cand.gather(1, (best // pool)[:, None]).squeeze(1)
        q = cand.gather(1, (best % pool)[:, None]).squeeze(1)

        move = ~done & found  # rows already adversarial or without a valid pair stop here
        rows = idx[move]
        pq = torch.stack([p[move], q[move]], 1)
        x[rows[:, None], pq] = (x[rows[:, None], pq] + theta).clamp(0, 1)
        at_bound = x[rows[:, None], pq] >= 1 if sign > 0 else x[rows[:, None], pq] <= 0
        domain[rows[:, None], pq] &= ~at_bound
        active[idx[~move]] = False
    return x.view(shape)
