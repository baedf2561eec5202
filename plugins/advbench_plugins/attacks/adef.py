"""ADef: adversarial deformations.

R. Alaifari, G. S. Alberti, T. Gauksson, "ADef: an Iterative Algorithm to Construct Adversarial
Deformations", ICLR 2019 (arXiv:1804.07729), Algorithm 1.

The image is deformed as ``y = x o (id + tau)`` (bilinear sampling, border clamped). Each step
linearises ``f_k = F_k - F_l`` in the vector field: ``f_k(y o (id + t)) ~ f_k(y) + <g_k, t>`` with
``g_k = sum_c dF/dy_c * grad(y_c)``, and takes the minimal-norm smooth solution
``t_k = -f_k(y) * S(S g_k) / ||S g_k||^2`` (``S`` = Gaussian filter with ``sigma``, in pixels),
the candidate with the smallest ``||t_k||`` is added to ``tau``. As in DeepFool, the deformation
applied (and linearised at) is ``overshoot * tau``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of an (N, 2, H, W) field (radius 4 sigma, edge replicated)."""
    if sigma <= 0:
        return field
    r = max(1, int(math.ceil(4 * sigma)))
    t = torch.arange(-r, r + 1, device=field.device, dtype=field.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(field.shape[1], 1, 1, 1)  # (2, 1, 1, 2r+1), one filter per component
    out = F.conv2d(F.pad(field, (r, r, 0, 0), mode="replicate"), k, groups=field.shape[1])
    k = k.transpose(2, 3)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k, groups=field.shape[1])


def _image_gradient(y: torch.Tensor) -> torch.Tensor:
    """Spatial derivatives of (N, C, H, W) -> (N, 2, C, H, W): d/dx (along width), d/dy (along
    height); central differences inside, one-sided at the border."""

    def diff(v: torch.Tensor) -> torch.Tensor:  # along the last axis
        inner = (v[..., 2:] - v[..., :-2]) / 2
        return torch.cat([v[..., 1:2] - v[..., :1], inner, v[..., -1:] - v[..., -2:-1]], -1)

    return torch.stack([diff(y), diff(y.transpose(-1, -2)).transpose(-1, -2)], 1)


def _deform(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``x o (id + tau)``: sample x at pixel u + tau(u); tau is (N, 2, H, W) in pixels (x, y)."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype),
        torch.arange(w, device=x.device, dtype=x.dtype),
        indexing="ij",
    )
    gx = (xs + tau[:, 0]) * (2 / max(w - 1, 1)) - 1  # align_corners=True pixel -> [-1, 1]
    gy = (ys + tau[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def adef_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    criterion,
    *,
    max_iterations: int = 50,
    sigma: float = 0.5,
    overshoot: float = 1.2,
    candidates: int = 1,
) -> torch.Tensor:
    """Non-targeted ADef; returns deformed images, stopping per row once ``criterion`` holds.

    Candidates are recomputed each step as the ``candidates`` most likely classes still ranked
    below the original label, so rules stricter than top-1 (label out of the top-k) keep pushing
    further classes past it. With a targeted criterion the only candidate is the target and the
    reference class is the best other class (stops near the target's decision boundary).
    """
    x = images.detach()
    n, _, h, w = x.shape
    labels = criterion.labels.to(x.device)
    targets = criterion.targets.to(x.device) if criterion.targets is not None else None
    tau = torch.zeros(n, 2, h, w, device=x.device, dtype=x.dtype)
    out = x.clone()
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    full = None  # latest logits of every row

    for it in range(max_iterations + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        with torch.enable_grad():
            y = _deform(x[idx], overshoot * tau[idx]).requires_grad_(True)
            logits = model(y)
        z = logits.detach()
        full = z if full is None else full.index_copy(0, idx, z)  # criterion needs all rows
        done = criterion(full).to(x.device)[idx]
        out[idx] = y.detach()
        if it == max_iterations:
            break
        if targets is None:
            ref = labels[idx]
            z_ref = z.gather(1, ref[:, None])
            # candidates: most likely classes still below the original label
            masked = torch.where(z < z_ref, z, torch.full_like(z, -float("inf")))
            m = min(candidates, z.shape[1] - 1)
            cand = masked.topk(m, dim=1).indices
            valid = masked.gather(1, cand) > -float("inf")
        else:
            cand = targets[idx][:, None]
            ref = z.scatter(1, cand, -float("inf")).argmax(1)  # best class other than the target
            valid = torch.ones_like(cand, dtype=torch.bool)

        dy = _image_gradient(y.detach())  # (n, 2, C, H, W)
        f = z.gather(1, cand) - z.gather(1, ref[:, None])  # (n, m), negative until crossed
        steps, norms = [], []
        for j in range(cand.shape[1]):  # one backward pass per candidate rank (not per image)
            with torch.enable_grad():  # callers may hold a no_grad context
                fj = (logits.gather(1, cand[:, j : j + 1]) - logits.gather(1, ref[:, None])).sum()
                (grad,) = torch.autograd.grad(fj, y, retain_graph=j + 1 < cand.shape[1])
            g = (grad[:, None] * dy).sum(2)  # chain rule through the deformation: (n, 2, H, W)
            sg = _gaussian_smooth(g, sigma)
            denom = sg.flatten(1).pow(2).sum(1).clamp_min(1e-12)
            step = -(f[:, j] / denom)[:, None, None, None] * _gaussian_smooth(sg, sigma)
            steps.append(step)
            norm = step.flatten(1).norm(dim=1)
            norms.append(torch.where(valid[:, j], norm, torch.full_like(norm, float("inf"))))
        norms = torch.stack(norms, 1)
        step = torch.stack(steps, 1)[torch.arange(len(idx), device=x.device), norms.argmin(1)]
        move = ~done & norms.isfinite().any(1)  # no candidate left: give up on the row
        tau[idx[move]] += step[move]
        active[idx[~move]] = False
    return out.clamp(0, 1)
