"""Conversions between uint8 HWC arrays, PIL images and float NCHW tensors, and image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_tensor(batch: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(batch, dtype=np.uint8, copy=True)).to(device).permute(0, 3, 1, 2).float().div_(255)


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded."""
    return batch.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def pil_to_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8, read-only; converts (a copy) only images that are not RGB already."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def array_to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(array, dtype=np.uint8), mode="RGB")


def save_image(array: np.ndarray, path: Path, fmt: str, quality: int) -> Path:
    """Save as the paper does (Pillow, JPEG quality 100 by default) and return the path."""
    path = path.with_suffix(".jpg" if fmt == "jpeg" else ".png")
    image = array_to_pil(array)
    if fmt == "jpeg":
        image.save(path, format="JPEG", quality=quality)
    else:
        image.save(path, format="PNG")
    return path


def load_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return pil_to_array(image)


def jpeg_roundtrip(array: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    array_to_pil(array).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return load_image(buf)  # type: ignore[arg-type]
