"""Spatial transformation attack: a grid search over rotations and translations.

L. Engstrom, B. Tran, D. Tsipras, L. Schmidt, A. Madry, "Exploring the Landscape of Spatial
Robustness", ICML 2019 (arXiv:1712.02779), §3-4: rotations in [-30°, 30°] (31 values) and
translations of up to about 10 % of the image per axis (5 values each; 3 pixels on CIFAR-10),
applied with bilinear sampling and zero (black) padding; the grid search is their strongest
attack.

Decision-based: the search needs only the verdict of the benchmark's criterion for each
transformed image (no gradients, no scores). The grid points are tried from the smallest
transformation to the largest (normalised size ``(angle/max_angle)^2 + (dx^2 + dy^2)/max_shift^2``,
ties broken by angle, then shift); each row keeps the first that satisfies the criterion and
stops, so its ``queries`` are the grid points evaluated on it. The identity is not a grid point
(it is the clean image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def spatial_grid(max_angle: float, n_angles: int, max_shift: float, n_shifts: int) -> list[tuple[float, float, float]]:
    """(angle in degrees, dx, dy in pixels) on the grid, smallest transformation first, no identity."""
    angles = torch.linspace(-max_angle, max_angle, n_angles).tolist() if n_angles > 1 else [0.0]
    shifts = torch.linspace(-max_shift, max_shift, n_shifts).tolist() if n_shifts > 1 else [0.0]

    def size(point: tuple[float, float, float]) -> tuple[float, ...]:
        a, dx, dy = point
        rel = (a / max_angle) ** 2 if max_angle else 0.0
        rel += (dx * dx + dy * dy) / max_shift**2 if max_shift else 0.0
        return (round(rel, 9), abs(a), abs(dx) + abs(dy), a, dx, dy)

    points = {(a, dx, dy) for a in angles for dx in shifts for dy in shifts}
    return sorted((p for p in points if p != (0.0, 0.0, 0.0)), key=size)


def rotate_translate(images: torch.Tensor, angle: float, dx: float, dy: float) -> torch.Tensor:
    """Rotate by ``angle`` degrees about the image centre, then shift by (dx, dy) pixels (right,
    down); bilinear sampling, zeros outside the image. Works for non-square images."""
    n, _, h, w = images.shape
    t = math.radians(angle)
    # sampling map: output pixel p -> input pixel R(-t) (p - shift), in normalised coordinates
    # (x scaled by 2/W, y by 2/H), so rotations stay rotations in pixel space
    scale = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    inverse = torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]], dtype=torch.float64)
    linear = inverse * scale[None, :] / scale[:, None]
    offset = -(inverse @ torch.tensor([dx, dy], dtype=torch.float64)) / scale
    theta = torch.cat([linear, offset[:, None]], 1).to(images)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def spatial_attack(model, images: torch.Tensor, criterion, *, max_angle: float, n_angles: int, max_shift: float,
                   n_shifts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first grid transformation (smallest first) the criterion accepts; rows never
    accepted come back unchanged. Returns the images and the grid points evaluated per row."""
    x = images.detach()
    n = len(x)
    best = x.clone()
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    logits = None
    with torch.no_grad():
        for angle, dx, dy in spatial_grid(max_angle, n_angles, max_shift, n_shifts):
            rows = (~done).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            moved = rotate_translate(x[rows], angle, dx, dy).clamp(0, 1)
            out = model(moved)
            queries[rows] += 1
            if logits is None:
                logits = out.new_zeros(n, out.shape[1])
            logits[rows] = out  # the criterion is defined on the whole batch
            holds = criterion(logits).to(x.device)[rows]
            best[rows[holds]] = moved[holds]
            done[rows[holds]] = True
    return best, queries
