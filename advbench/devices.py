"""Device helpers of the plugin contract: plugins may import this module (never the runner)."""

from __future__ import annotations

import torch

from advbench.errors import DataError


def resolve_device(device: str, key: str = "benchmark.device") -> str:
    """'auto' -> CUDA when available, else CPU; a CUDA device on a machine without one is a
    one-line error naming ``key``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"{key} = {device!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device
