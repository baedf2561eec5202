"""A black-box attack: blend each image towards another image of the batch, as little as works."""

import torch
from pydantic import Field

from advbench.plugin import AttackSpec, Params


class BlendParams(Params):
    max_alpha: float = Field(0.6, gt=0, le=1, description="Largest share of the other image mixed in.")
    levels: int = Field(12, ge=1, le=100, description="Blend shares tried, evenly spaced up to max_alpha.")


def blend_attack(model, images, criterion, params, ctx):
    """Per image, the smallest blend ``(1 - a) x + a y`` (``y``: the next image of the batch) that
    meets ``criterion``; the image itself where none does. Needs only the model's outputs."""
    others = images.roll(1, dims=0)
    best = images.clone()
    done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    for alpha in torch.linspace(params.max_alpha / params.levels, params.max_alpha, params.levels).tolist():
        candidate = (1 - alpha) * images + alpha * others
        with torch.no_grad():
            hit = criterion(model(candidate)) & ~done
        best[hit], done = candidate[hit], done | hit
        if done.all():
            break
    return best


BLEND = AttackSpec(name="example-blend", summary="Blend towards another image, smallest share that works (example plugin).",
                   params=BlendParams, run=blend_attack, targeted=False)
