"""A plugin's optional abilities, as its spec declares them.

Specs declare what their plugins can do (``FeatureSpec.takes_probs``, ``DetectorSpec.saves``,
``.differentiable``, ``.has_logits``, ``.selects_on_dev``); the core asks here and nowhere else.
A declaration left ``None`` comes from a plugin written for plugin API 1.2 or earlier, before
abilities were declared: for those alone the answer is found as 1.2 found it, by looking at the
function's signature or the detector's methods.
"""

from __future__ import annotations

import inspect
from typing import Any

#: detector abilities -> the methods an undeclared (API <= 1.2) detector is probed for
DETECTOR_METHODS = {"saves": ("save", "load"), "differentiable": ("torch_scores",), "has_logits": ("logits",)}


def takes_probs(spec: Any) -> bool:
    """Whether a feature's ``compute`` receives ``probs=``."""
    if spec.takes_probs is not None:
        return spec.takes_probs
    try:
        return "probs" in inspect.signature(spec.compute).parameters
    except (TypeError, ValueError):
        return False


def detector_can(spec: Any, detector: Any, ability: str) -> bool:
    """Whether ``detector`` (built by ``spec``) has ``ability``: "saves", "differentiable",
    "has_logits" or "selects_on_dev"."""
    declared = getattr(spec, ability)
    if declared is not None:
        return declared
    if ability == "selects_on_dev":
        return "dev" in inspect.signature(detector.fit).parameters
    return all(hasattr(detector, m) for m in DETECTOR_METHODS[ability])
