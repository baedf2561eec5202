"""Registers the paper's four operation families (§3.1) as transform plugins.

With no ``[[transforms]]`` in a benchmark, their default grids give the paper's 38 operations
in the groups jpeg (16), blur (4), rotation (8) and scaling (10).

The tensor backends of blur (convolutions), rotation (bilinear grid sampling times a constant
mask) and scaling (antialiased bilinear interpolation) have finite, useful gradients
(``differentiable=True``; checked in tests/plugins/attacks/test_adaptive_operations.py). JPEG's
rounding and quantisation have none: adaptive attacks use a straight-through estimator for it
(``advbench.differentiable``).
"""

from __future__ import annotations

from pydantic import Field

from advbench.plugin import Params, TransformSpec

from advbench_plugins.transforms import operations as ops


class JpegParams(Params):
    quality: int = Field(75, ge=1, le=100, description="JPEG quality factor (Pillow).")


class BlurParams(Params):
    kernel_size: int = Field(3, ge=1, le=31, description="The paper's kernel size; sigma = blur_sigma(kernel_size).")


class RotationParams(Params):
    angle: float = Field(1.0, gt=-360, lt=360, description="Clockwise angle in degrees; not rotated back.")


class ScalingParams(Params):
    factor: float = Field(0.9, gt=0.05, le=8, description="Scale factor; not scaled back.")


TRANSFORMS = [
    TransformSpec(name="jpeg", summary="JPEG re-compression at a quality factor.", params=JpegParams,
                  apply=lambda im, p: ops.jpeg(im, p.quality),
                  apply_tensor=lambda b, p: ops.jpeg_tensor(b, p.quality),
                  default_grid={"quality": list(ops.JPEG_QUALITIES)}, default_group="jpeg", default=True),
    TransformSpec(name="blur", summary="Gaussian blur with the paper's kernel size.", params=BlurParams,
                  apply=lambda im, p: ops.gaussian_blur(im, p.kernel_size),
                  apply_tensor=lambda b, p: ops.gaussian_blur_tensor(b, p.kernel_size),
                  differentiable=True, default_grid={"kernel_size": list(ops.BLUR_KERNEL_SIZES)}, default_group="blur", default=True),
    TransformSpec(name="rotation", summary="Clockwise rotation, same size, bilinear, black fill.",
                  params=RotationParams, apply=lambda im, p: ops.rotate(im, p.angle),
                  apply_tensor=lambda b, p: ops.rotate_tensor(b, p.angle), differentiable=True,
                  default_grid={"angle": [int(a) for a in ops.ROTATION_ANGLES]}, default_group="rotation", default=True),
    TransformSpec(name="scaling", summary="Bilinear rescaling by a factor (the image size changes).",
                  params=ScalingParams, apply=lambda im, p: ops.scale(im, p.factor),
                  apply_tensor=lambda b, p: ops.scale_tensor(b, p.factor), differentiable=True,
                  default_grid={"factor": list(ops.SCALE_FACTORS)}, default_group="scaling", default=True),
]
