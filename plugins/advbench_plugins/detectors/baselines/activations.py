"""Intermediate activations of an arbitrary classifier, read with forward hooks.

The baseline detectors (kernel density, LID, Mahalanobis) look inside the classifier. Any
``nn.Module`` works; which outputs are read is a plain string so it can be a plugin parameter:

- ``"children"`` (the default): the outputs of the top-level children of the network, after
  stepping through single-child wrappers (advbench's ``Normalized``, the testing ``_Scaled``,
  ``MinSide``), so ResNet-20 gives ``conv1, bn1, layer1, layer2, layer3, linear`` and a
  torchvision ResNet ``conv1 ... layer4, avgpool, fc``. Children that only reshape or are
  identities in eval mode (Flatten, Identity, Dropout) are skipped;
- ``"stages"``: for a network built of ``nn.Sequential`` stages (ResNets), the input of the
  first stage (the stem's output, after its ReLU) and the output of every stage: Lee et al.'s
  feature list (ResNet-20: ``layer1:in, layer1, layer2, layer3``);
- ``"blocks"``: the same stem output and the output of every block of every stage (each ends
  with a ReLU in a ResNet): the post-ReLU block outputs LID reads (ResNet-20: 10 layers). A
  network without Sequential stages gets its children for either;
- otherwise a comma-separated list of module names as ``named_modules()`` spells them
  (``net.layer2``; ``net.layer2:in`` for the module's input) or of module class names
  (``Conv2d``: every module of that type), in any mix, the keywords included.

The *penultimate* features are the input of the last ``nn.Linear`` (in registration order):
what the classifier's final layer sees. The *logits* are the network's output; a hooked layer
that returns the logits themselves (the final Linear) is reported once, as ``logits``.

Hooks live only for one forward pass (:meth:`ActivationProbe.__call__`), so the shared model
is left as it was found. Gradients flow when the caller has them enabled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from advbench.plugin import DataError, PluginError, to_tensor

#: children that add nothing to read: reshapes, identities, and dropout (an identity in eval mode)
PASSIVE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.modules.dropout._DropoutNd)
LOGITS = "logits"
INPUT = ":in"  # a layer name ending so names the input of the module
PENULTIMATE = "penultimate"


def unwrap(module: nn.Module) -> tuple[str, nn.Module]:
    """Step through modules with exactly one child (normalisation or resizing wrappers):
    returns the name prefix of the network inside (``"net."``) and the network."""
    prefix = ""
    while True:
        children = list(module.named_children())
        if len(children) != 1:
            return prefix, module
        name, module = children[0]
        prefix += name + "."


def select_layers(module: nn.Module, layers: str = "children") -> list[str]:
    """Names (as in ``module.named_modules()``) of the modules whose outputs ``layers`` selects;
    see the module docstring. Unknown names are a PluginError listing valid ones."""
    named = dict(module.named_modules())
    by_type: dict[str, list[str]] = {}
    for name, m in named.items():
        if name:
            by_type.setdefault(type(m).__name__, []).append(name)
    chosen: list[str] = []
    for item in (s.strip() for s in layers.split(",")):
        if not item:
            continue
        if item in ("children", "stages", "blocks"):
            found = _keyword_layers(module, item)
        elif item.endswith(INPUT) and item.removesuffix(INPUT) in named:
            found = [item]
        elif item in named:
            found = [item]
        elif item in by_type:
            found = by_type[item]
        else:
            valid = ["children", *list(named)[1:12], *sorted(by_type)[:8]]
            raise PluginError(f"layers: no module or module type {item!r} in {type(module).__name__}; "
                              f"valid: {', '.join(valid)}, ...")
        chosen += [n for n in found if n not in chosen]
    if not chosen:
        raise PluginError(f"layers = {layers!r} selects no module of {type(module).__name__}")
    return chosen


def has_stages(module: nn.Module) -> bool:
    """Whether the network (inside its wrappers) is built of ``nn.Sequential`` stages."""
    return any(isinstance(c, nn.Sequential) for _, c in unwrap(module)[1].named_children())


def _keyword_layers(module: nn.Module, keyword: str) -> list[str]:
    prefix, net = unwrap(module)
    children = [(n, c) for n, c in net.named_children() if not isinstance(c, PASSIVE)]
    stages = [(n, c) for n, c in children if isinstance(c, nn.Sequential)]
    if keyword == "children" or not stages:
        return [prefix + n for n, _ in children]
    stem = prefix + stages[0][0] + INPUT
    if keyword == "stages":
        return [stem, *(prefix + n for n, _ in stages)]
    return [stem, *(f"{prefix}{n}.{b}" for n, stage in stages for b, _ in stage.named_children())]


def last_linear(module: nn.Module) -> str:
    """Name of the last ``nn.Linear`` of ``module``: its input is the penultimate features."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise PluginError(f"{type(module).__name__} has no nn.Linear layer: the penultimate features are the "
                          "input of the classifier's last linear layer")
    return names[-1]


def reduce(activation: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per image: ``flatten`` everything, or ``mean`` over the spatial axes
    (a channel vector for a feature map; vectors pass unchanged)."""
    if how == "flatten" or activation.ndim <= 2:
        return activation.flatten(1)
    if how == "mean":
        return activation.flatten(2).mean(2)
    raise ValueError(f"reduce must be 'flatten' or 'mean', got {how!r}")


class ActivationProbe:
    """Reads the outputs of ``layers`` (names from :func:`select_layers`), optionally the
    penultimate features, and the logits, in one forward pass of ``module``."""

    def __init__(self, module: nn.Module, layers: Sequence[str] = (), penultimate: bool = False):
        self.module = module
        modules = dict(module.named_modules())
        self.layers = list(layers)
        self._targets = [(name, modules[name.removesuffix(INPUT)]) for name in self.layers]
        self._linear = modules[last_linear(module)] if penultimate else None

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer name: output, "penultimate": (N, D), "logits": (N, C)}`` for a float batch."""
        found: dict[str, torch.Tensor] = {}
        handles = []

        def keep(name):
            def hook(_module, _inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise PluginError(f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                                      "choose another layer")
                found[name] = output
            return hook

        def keep_input(_module, inputs):
            found[PENULTIMATE] = inputs[0]

        def keep_in(name):
            def hook(_module, inputs):
                found[name] = inputs[0]
            return hook

        try:
            handles = [m.register_forward_pre_hook(keep_in(name)) if name.endswith(INPUT)
                       else m.register_forward_hook(keep(name)) for name, m in self._targets]
            if self._linear is not None:
                handles.append(self._linear.register_forward_pre_hook(keep_input))
            logits = self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in self.layers if n not in found]
        if missing:
            raise PluginError(f"layers {', '.join(missing)} did not run in the forward pass; choose others")
        out = {n: found[n] for n in self.layers if found[n] is not logits}
        if PENULTIMATE in found:
            out[PENULTIMATE] = found[PENULTIMATE].flatten(1)
        out[LOGITS] = logits
        return out


# --- batches of images ---------------------------------------------------------------------


def as_images(images: object, who: str) -> np.ndarray:
    """The uint8 (N, H, W, 3) array the core hands a detector, or a DataError naming ``who``."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{who}: expects uint8 RGB images as an (N, H, W, 3) array, got {arr.dtype} {arr.shape}")
    return arr


def image_batches(images: np.ndarray, batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
    """Float (n, 3, H, W) batches in [0, 1] on ``device``."""
    for start in range(0, len(images), batch_size):
        yield to_tensor(images[start:start + batch_size], str(device))


def model_device(module: nn.Module, fallback: str) -> torch.device:
    """Where the classifier's weights are (inputs must go there); ``fallback`` without any."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device(fallback)


@dataclass(frozen=True)
class Collected:
    """Per-image vectors of every probed layer (CPU float32), the logits and predicted labels."""

    features: dict[str, torch.Tensor]
    logits: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(1)


def collect(probe: ActivationProbe, images: np.ndarray, batch_size: int, device: torch.device | str,
            how: str = "flatten") -> Collected:
    """Run ``probe`` over uint8 ``images`` in batches without gradients; each activation is
    reduced (:func:`reduce`) and kept on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for x in image_batches(images, batch_size, device):
            for name, value in probe(x).items():
                parts.setdefault(name, []).append(reduce(value, how).float().cpu())
    if not parts:
        raise DataError("no images to read activations from")
    logits = torch.cat(parts.pop(LOGITS))
    return Collected({n: torch.cat(v) for n, v in parts.items()}, logits)
