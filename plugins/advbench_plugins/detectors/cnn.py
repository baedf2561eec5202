"""CNN detectors trained on the images themselves (§4 of the paper): label 1 = adversarial.

The paper's training strategy is to *omit the final softmax layer during training* and keep it
at test time to turn the outputs into probabilities; its eq. 3, ``L = -y log(y_adv) - (1 - y)
log(y_norm)``, is a cross-entropy. How we read the two settings:

- ``softmax = true`` (the baseline): the network's last layer is a softmax and it is trained
  with PyTorch's ``CrossEntropyLoss``, which applies its own log-softmax, so the loss sees a
  softmax of probabilities (:func:`softmax_layer_loss`). Its inputs are squeezed into [0, 1], so
  the loss barely moves and its gradient stays small: the paper's "training from scratch with
  the final softmax layer was difficult" (EER ≈ 50 %) and its need of a lower learning rate.
- ``softmax = false`` (the paper's method): the same loss on the raw logits
  (:func:`logits_loss`), i.e. ordinary cross-entropy, with the decision boundary
  ``logit_norm = logit_adv`` through the origin (Fig. 2).

We do not read eq. 3 as ``log`` of raw logits (undefined below 0) nor as ``nll_loss`` on raw
logits (``-logit[y]``): that loss is lowered without bound by raising *both* logits of every
image, whatever the class, so nothing rewards telling the classes apart. Measured on the
CIFAR-10 benchmark it collapsed to "everything adversarial" (EER 0.50), with or without class
weights.

Architectures: ``small-cnn`` (fast on CPU, for small images), ``resnet50`` (torchvision) and
``xception`` (timm's ``legacy_xception``, Chollet's original network). Pretrained weights are
read from local files only, never downloaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from advbench.plugin import DataError, Params, PluginError, resolve_device, to_tensor

from advbench_plugins.models.loading import IMAGENET_MEAN, IMAGENET_STD, Normalized, load_checkpoint

ARCHS = ("small-cnn", "resnet50", "xception")
TIMM_XCEPTION = "legacy_xception"  # timm >= 0.9 name of the original Xception ("xception" is a deprecated alias)
MIN_SIDE = {"small-cnn": 0, "resnet50": 32, "xception": 71}  # Keras' minimum input sides


# --- losses --------------------------------------------------------------------------------


def logits_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """No final softmax layer: cross-entropy on the raw logits (the paper's method)."""
    return F.cross_entropy(logits, y, weight=weight)


def softmax_layer_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A final softmax layer trained with ``CrossEntropyLoss``: cross-entropy of the softmax
    *probabilities* (the paper's baseline). For two classes it stays within [log(1 + 1/e),
    log(1 + e)] ≈ [0.31, 1.31] whatever the logits, and flattens as the softmax saturates."""
    return F.cross_entropy(torch.softmax(logits, dim=1), y, weight=weight)


# --- networks ------------------------------------------------------------------------------


class MinSide(nn.Module):
    """Upsamples (bilinear) inputs whose shorter side is below ``min_side``, then runs ``net``."""

    def __init__(self, net: nn.Module, min_side: int = 0):
        super().__init__()
        self.net = net
        self.min_side = int(min_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.min_side and min(h, w) < self.min_side:
            scale = self.min_side / min(h, w)
            size = (max(self.min_side, round(h * scale)), max(self.min_side, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.net(x)


def small_cnn(num_classes: int = 2, width: int = 32) -> nn.Module:
    """Four 3x3 conv layers with batch norm, two max-pools, global average pooling, linear head."""
    w = width

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, w), *block(w, w), nn.MaxPool2d(2),
        *block(w, 2 * w), nn.MaxPool2d(2),
        *block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _resnet50_weights():
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.DEFAULT


def _xception_url() -> str:
    timm = _timm()
    return timm.models.get_pretrained_cfg(TIMM_XCEPTION).url


def _timm():
    try:
        import timm
    except ImportError as e:  # timm is an optional dependency of the built-in plugins
        raise PluginError("the xception CNN detector needs timm: pip install timm") from e
    return timm


def pretrained_weights_file(arch: str, weights_file: str | os.PathLike[str] | None = None) -> Path:
    """The ImageNet weight file ``arch`` loads with ``pretrained=True``; DataError when absent.

    ``weights_file`` overrides the default place: the torch hub cache
    (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``), where
    torchvision and timm would have cached a download.
    """
    if arch == "small-cnn":
        raise DataError("small-cnn has no pretrained weights: use pretrained = false")
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise DataError(f"pretrained weights for {arch} not found: {path} is not a file")
        return path
    url = _resnet50_weights().url if arch == "resnet50" else _xception_url()
    name = os.path.basename(url)
    folder = _hub_checkpoints()
    path = folder / name
    if not path.is_file():
        raise DataError(
            f"pretrained ImageNet weights for {arch} not found: put {name} (from {url}) in {folder} "
            f"(set TORCH_HOME to move it), or set weights_file, or use pretrained = false"
        )
    return path


def build_network(arch: str, pretrained: bool = False, num_classes: int = 2,
                  weights_file: str | os.PathLike[str] | None = None) -> nn.Module:
    """A classifier taking float images in [0, 1] (N, 3, H, W) and returning ``num_classes`` logits.

    Normalisation happens inside (ImageNet mean/std; Xception's own (0.5, 0.5) as its weights
    expect), and inputs smaller than the architecture's minimum side (resnet50: 32,
    xception: 71) are upsampled inside. With ``pretrained`` the ImageNet weights are loaded
    from a local file only (see :func:`pretrained_weights_file`) and the 1000-class head is
    replaced by a fresh ``num_classes`` one.
    """
    if arch not in ARCHS:
        raise PluginError(f"unknown CNN architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if arch == "small-cnn":
        if pretrained:
            pretrained_weights_file(arch)  # raises
        net: nn.Module = Normalized(small_cnn(num_classes), IMAGENET_MEAN, IMAGENET_STD)
    elif arch == "resnet50":
        import torchvision

        resnet = torchvision.models.resnet50(weights=None)
        if pretrained:
            load_checkpoint(pretrained_weights_file(arch, weights_file), resnet)
        resnet.fc = nn.Linear(resnet.fc.in_features, num_classes)
        net = Normalized(resnet, IMAGENET_MEAN, IMAGENET_STD)
    else:
        timm = _timm()
        xception = timm.create_model(TIMM_XCEPTION, pretrained=False)
        if pretrained:
            load_checkpoint(pretrained_weights_file(arch, weights_file), xception)
        xception.reset_classifier(num_classes)
        cfg = xception.pretrained_cfg
        net = Normalized(xception, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    return MinSide(net, MIN_SIDE[arch])


# --- parameters ----------------------------------------------------------------------------


class CNNTrainParams(Params):
    """Training settings shared by every CNN detector (the paper: Adam, 5e-4; 5e-5 to fine-tune with softmax)."""

    softmax: bool = Field(False, description="Train with a final softmax layer under cross-entropy (the paper's "
                                             "baseline) instead of cross-entropy on the raw logits (its method). "
                                             "Tests always use the softmax.")
    learning_rate: float | None = Field(None, gt=0, description="Adam learning rate; null = the paper's: 5e-5 "
                                                                "when fine-tuning with softmax, else 5e-4.")
    epochs: int = Field(20, ge=1, description="Training epochs at most.")
    batch_size: int = Field(32, ge=2, description="Images per training step.")
    patience: int | None = Field(5, ge=1, description="Stop after this many epochs without a better dev score; "
                                                      "null = run every epoch.")
    dev_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the training images held out (stratified) "
                                                             "for model selection when fit() gets no dev set; "
                                                             "0 = keep the last epoch.")
    max_side: int | None = Field(None, ge=8, description="Downscale images whose longer side exceeds this "
                                                         "(antialiased), to bound the cost; null = as given.")
    balance: bool = Field(False, description="Weight the loss by inverse class frequency (the paper did not).")
    score: Literal["probability", "margin"] = Field(
        "probability", description="scores(): softmax probability of 'adversarial' (the paper), or the logit "
                                   "margin logit_adv - logit_norm (same order, never saturates: finer ROC/EER).")
    device: str = Field("auto", description="torch device; auto = CUDA when available, else CPU.")


class PretrainableParams(CNNTrainParams):
    pretrained: bool = Field(False, description="Fine-tune from ImageNet weights read from the local torch hub "
                                                "cache (never downloaded); false = train from scratch.")
    weights_file: str | None = Field(None, description="ImageNet weight file to use instead of the torch hub "
                                                       "cache (with pretrained = true).")

    @model_validator(mode="after")
    def _weights_file_needs_pretrained(self):
        if self.weights_file is not None and not self.pretrained:
            raise ValueError("weights_file is only read with pretrained = true")
        return self



def resized(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) of an image scaled down so that its longer side is at most ``max_side``."""
    if max_side is None or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))

class CNNDetectorParams(PretrainableParams):
    arch: Literal["small-cnn", "resnet50", "xception"] = Field("small-cnn", description="Network architecture.")


# --- the detector --------------------------------------------------------------------------


def detector_device(name: str, detector: str) -> torch.device:
    try:
        return torch.device(resolve_device(name, key=f"{detector}.device"))
    except RuntimeError as e:
        raise PluginError(f"{detector}.device: invalid torch device {name!r}: {e}") from e


def _as_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"CNN detectors take uint8 RGB images as an (N, H, W, 3) array, got {arr.dtype} {arr.shape}")
    return arr


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, dev): ``fraction`` of each class, chosen with ``seed``, goes to dev."""
    rng = np.random.default_rng(seed)
    dev = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if 0 < k < len(idx):
            dev.append(rng.permutation(idx)[:k])
    dev_idx = np.sort(np.concatenate(dev)) if dev else np.zeros(0, dtype=int)
    return np.setdiff1d(np.arange(len(labels)), dev_idx), dev_idx


def _progress(enabled: bool | None):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}  dev acc {task.fields[dev]}"), TimeElapsedColumn(),
                    console=console, transient=True,
                    disable=not console.is_terminal if enabled is None else not enabled)


class CNNDetector:
    """A binary CNN detector on uint8 RGB images (N, H, W, 3); label 1 = adversarial.

    ``fit`` trains with Adam, selects the epoch with the best dev accuracy (ties: lower dev
    cross-entropy) and stops early after ``patience`` epochs without improvement. The dev set
    is ``dev=(images, labels)`` when given, else ``dev_fraction`` of the training images.
    After fitting, ``history`` lists each epoch's mean training loss and dev metrics and
    ``best_epoch`` the epoch kept (1-based; the last one when there is no dev set).

    ``progress``: show a transient progress bar on stderr (loss, dev accuracy); None = only
    when stderr is a terminal. Pass False when the caller already draws a live display.
    """

    def __init__(self, params: CNNDetectorParams | None = None, seed: int = 0, name: str | None = None,
                 progress: bool | None = None):
        self.params = params or CNNDetectorParams()
        self.seed = int(seed)
        self.name = name or f"cnn-{self.params.arch}"
        self.progress = progress
        self.device = detector_device(self.params.device, self.name)
        self.module: nn.Module | None = None
        self._last: tuple[Any, np.ndarray] | None = None  # (images, their logits), see logits()
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        if self.params.pretrained:  # fail before any expensive work, not at fit time
            pretrained_weights_file(self.params.arch, self.params.weights_file)

    # -- helpers ------------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        p = self.params
        if p.learning_rate is not None:
            return p.learning_rate
        return 5e-5 if (p.pretrained and p.softmax) else 5e-4

    def _to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        return self._resize(to_tensor(batch, self.device))

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = resized(*x.shape[-2:], self.params.max_side)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def _eval_logits(self, module: nn.Module, images: np.ndarray) -> torch.Tensor:
        module.eval()
        out = []
        step = max(1, 2 * self.params.batch_size)
        with torch.inference_mode():
            for start in range(0, len(images), step):
                out.append(module(self._to_tensor(images[start:start + step])).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    # -- Detector protocol --------------------------------------------------------------

    def fit(self, images: Any, labels: Any, dev: tuple[Any, Any] | None = None) -> CNNDetector:
        p = self.params
        images = _as_images(images)
        labels = np.asarray(labels).astype(np.int64).ravel()
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) < 2:
            raise ValueError("a CNN detector needs at least 2 training images")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be 0 (normal) or 1 (adversarial), got {sorted(set(labels.tolist()))}")
        if dev is not None:
            dev_images, dev_labels = _as_images(dev[0]), np.asarray(dev[1]).astype(np.int64).ravel()
            train_images, train_labels = images, labels
        elif p.dev_fraction > 0:
            tr, dv = _stratified_split(labels, p.dev_fraction, self.seed)
            train_images, train_labels = images[tr], labels[tr]
            dev_images, dev_labels = images[dv], labels[dv]
        else:
            train_images, train_labels = images, labels
            dev_images, dev_labels = images[:0], labels[:0]
        has_dev = len(dev_labels) > 0

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded, without touching the caller's RNG state
            torch.manual_seed(self.seed)
            module = build_network(p.arch, p.pretrained, 2, p.weights_file).to(self.device)
            self.module = self._train(module, train_images, train_labels, dev_images, dev_labels, has_dev)
        self._last = None
        return self

    def _train(self, module: nn.Module, x: np.ndarray, y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray,
               has_dev: bool) -> nn.Module:
        p = self.params
        loss_fn = softmax_layer_loss if p.softmax else logits_loss
        weight = None
        if p.balance:
            counts = np.bincount(y, minlength=2).astype(np.float64)
            w = np.where(counts > 0, len(y) / (2 * np.maximum(counts, 1)), 0.0)
            weight = torch.tensor(w, dtype=torch.float32, device=self.device)
        opt = torch.optim.Adam(module.parameters(), lr=self.learning_rate)
        gen = torch.Generator().manual_seed(self.seed)
        y_t = torch.from_numpy(y)
        n = len(x)
        batches_per_epoch = max(1, math.ceil(n / p.batch_size) - (1 if n % p.batch_size == 1 and n > 1 else 0))

        self.history, self.best_epoch = [], 0
        best_key: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        stale = 0
        with _progress(self.progress) as progress:
            task = progress.add_task(self.name, total=p.epochs * batches_per_epoch, loss="-", dev="-")
            for epoch in range(1, p.epochs + 1):
                module.train()
                order = torch.randperm(n, generator=gen)
                total, seen, diverged = 0.0, 0, False
                for batch in order.split(p.batch_size):
                    if len(batch) < 2 and n > 1:  # batch norm cannot train on a single image
                        continue
                    idx = batch.numpy()
                    logits = module(self._to_tensor(x[idx]))
                    loss = loss_fn(logits, y_t[batch].to(self.device), weight)
                    if not torch.isfinite(loss):
                        diverged = True
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(batch)
                    seen += len(batch)
                    progress.update(task, advance=1, loss=f"{total / seen:.4g}")
                record = {"epoch": epoch, "loss": total / max(seen, 1)}
                if diverged:  # logits overflowed: keep the best epoch so far
                    record["diverged"] = 1.0
                    self.history.append(record)
                    break
                if not has_dev:
                    self.history.append(record)
                    self.best_epoch = epoch
                    continue
                dev_logits = self._eval_logits(module, dev_x)
                dev_t = torch.from_numpy(dev_y)
                accuracy = float((dev_logits.argmax(1) == dev_t).float().mean())
                dev_ce = float(F.cross_entropy(dev_logits.double(), dev_t))
                record.update(dev_accuracy=accuracy, dev_cross_entropy=dev_ce)
                self.history.append(record)
                progress.update(task, dev=f"{accuracy:.3f}")
                key = (accuracy, -dev_ce if math.isfinite(dev_ce) else -math.inf)
                if best_key is None or key > best_key:
                    best_key, stale, self.best_epoch = key, 0, epoch
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                else:
                    stale += 1
                    if p.patience is not None and stale >= p.patience:
                        break
        if best_state is not None:
            module.load_state_dict(best_state)
        return module.eval()

    def logits(self, images: Any) -> np.ndarray:
        """(N, 2) float logits: column 0 = normal, column 1 = adversarial (Fig. 2's axes).

        The last result is kept for the same array object: predict(), scores() and logits() of
        one image set then cost one pass of the network, not three."""
        if self.module is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")
        if self._last is None or self._last[0] is not images:
            self._last = (images, self._eval_logits(self.module, _as_images(images)).double().numpy())
        return self._last[1]

    def scores(self, images: Any) -> np.ndarray:
        """Softmax probability of 'adversarial' (``score="margin"``: logit_adv - logit_norm)."""
        z = self.logits(images)
        margin = z[:, 1] - z[:, 0]
        if self.params.score == "margin":
            return margin
        return 0.5 * (1.0 + np.tanh(margin / 2.0))  # softmax of two logits, without overflow

    #: predict() flags an image when torch_scores(image) > threshold (logit_adv > logit_norm)
    threshold = 0.0

    def torch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logit margin logit_adv - logit_norm of a float (N, 3, H, W) batch in
        [0, 1], for attacks that know the detector (the network stays in eval mode)."""
        if self.module is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")
        self.module.eval()
        z = self.module(self._resize(x.to(self.device)))
        return (z[:, 1] - z[:, 0]).to(x.device)

    def save(self, directory: Path) -> None:
        """The fitted network's weights (loaded back with ``weights_only=True``)."""
        if self.module is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, directory / "weights.pt")

    def load(self, directory: Path) -> CNNDetector:
        p = self.params
        module = build_network(p.arch, False, 2).to(self.device)
        module.load_state_dict(torch.load(directory / "weights.pt", map_location=self.device, weights_only=True))
        self.module, self._last = module.eval(), None
        return self

    def predict(self, images: Any) -> np.ndarray:
        z = self.logits(images)
        return (z[:, 1] > z[:, 0]).astype(int)

    def __repr__(self) -> str:
        return f"CNNDetector({self.params!r}, seed={self.seed})"


__all__ = [
    "ARCHS", "TIMM_XCEPTION", "CNNDetector", "CNNDetectorParams", "CNNTrainParams", "PretrainableParams",
    "build_network", "logits_loss", "pretrained_weights_file", "softmax_layer_loss", "small_cnn",
]
