"""Box-constrained L-BFGS attack.

C. Szegedy, W. Zaremba, I. Sutskever, J. Bruna, D. Erhan, I. Goodfellow, R. Fergus,
"Intriguing properties of neural networks", ICLR 2014 (arXiv:1312.6199), section 4.1.

For each image, minimise ``c * ||r||_2^2 + CE(f(x + r), target)`` subject to ``x + r`` in
[0, 1], and search over ``c`` for the largest penalty (smallest distortion) that still gives an
adversarial example. The box is enforced by the change of variables ``x + r = (tanh(w) + 1) / 2``
so an unconstrained L-BFGS can be used; the whole batch is optimised at once with
``torch.optim.LBFGS`` on the summed objective, which separates across images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lbfgs_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    criterion,
    *,
    initial_const: float = 1e-2,
    binary_search_steps: int = 5,
    max_iterations: int = 50,
    learning_rate: float = 1.0,
) -> torch.Tensor:
    """Targeted L-BFGS attack; returns the least-distorted adversarial found per row.

    Non-targeted criteria (``criterion.targets is None``) are attacked towards the second most
    likely class. Rows never made adversarial are returned unchanged. L-BFGS runs on the summed
    objective, so its shared line search couples rows: a row's result depends on its batch.
    """
    x = images.detach()
    n = x.shape[0]
    with torch.no_grad():
        logits0 = model(x)
    if criterion.targets is not None:
        target = criterion.targets.to(x.device)
    else:  # no target given: the runner-up class is the cheapest one to reach
        target = logits0.topk(2, dim=1).indices[:, 1]

    # atanh of the image, shrunk slightly so pixels at exactly 0/1 stay finite
    w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
    const = torch.full((n,), float(initial_const), device=x.device, dtype=x.dtype)
    lo = torch.zeros_like(const)  # largest c known to succeed (0 = none yet)
    hi = torch.full_like(const, float("inf"))  # smallest c known to fail
    best = x.clone()
    best_dist = torch.full_like(const, float("inf"))

    for _ in range(binary_search_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [w], lr=learning_rate, max_iter=max_iterations, line_search_fn="strong_wolfe"
        )
        succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)

        def closure() -> torch.Tensor:
            with torch.enable_grad():
                adv = (torch.tanh(w) + 1) / 2
                logits = model(adv)
                dist = (adv - x).flatten(1).pow(2).sum(1)
                loss = (const * dist + F.cross_entropy(logits, target, reduction="none")).sum()
                # grad w.r.t. w only: keeps the model's .grad untouched
                (w.grad,) = torch.autograd.grad(loss, w)
            with torch.no_grad():  # every evaluated point is a candidate, keep the best
                ok = criterion(logits.detach()).to(x.device)
                better = ok & (dist < best_dist)
                best[better] = adv.detach()[better]
                best_dist[better] = dist.detach()[better]
                succeeded[ok] = True
            return loss.detach()

        opt.step(closure)

        # per-image search on c: success -> try a larger penalty, failure -> a smaller one
        lo = torch.where(succeeded, const, lo)
        hi = torch.where(succeeded, hi, const)
        const = torch.where(hi.isinf(), const * 10, (lo + hi) / 2)
    return best.clamp(0, 1)
