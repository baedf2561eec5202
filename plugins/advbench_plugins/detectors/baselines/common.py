"""What the model-aware baseline detectors share: the Detector protocol over uint8 images,
differentiable scores, persistence without pickle, and a logistic-regression head.

A subclass implements ``_fit(images, labels, info)`` and ``_score_batch(x)`` (differentiable scores
of a float batch in [0, 1] on the model's device), plus ``_state()``/``_load_state()`` (a dict
of tensors). ``scores`` = ``_score_batch`` under no_grad, so ``torch_scores`` and ``scores``
agree by construction; ``predict`` = ``scores > threshold``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from advbench.plugin import DataError, DetectorContext, FitInfo, Params, PluginError

from advbench_plugins.detectors.baselines.activations import as_images, image_batches, model_device

STATE_FILE = "state.pt"
META_FILE = "detector.json"


class ModelDetectorParams(Params):
    batch_size: int = Field(128, ge=1, description="Images per forward pass of the classifier.")


class HeadParams(ModelDetectorParams):
    C: float = Field(1.0, gt=0, description="Inverse L2 regularisation of the logistic regression on the "
                                            "standardised detector features (the papers chose it by "
                                            "cross-validation; here the core's dev search can).")
    balanced: bool = Field(True, description="Weight the two classes equally in the logistic regression, as "
                                             "the papers' balanced training sets did; without it a mixture "
                                             "of many attacks (6 adversarial images per normal one in the "
                                             "paper's database) puts the threshold at 'all adversarial'.")
    noisy: bool = Field(True, description="Train the logistic regression on Gaussian-noisy normal images too, as "
                                          "negatives: for each adversarial training image, its source plus Gaussian "
                                          "noise of the perturbation's L2 norm (the papers' 1 adversarial : 2 normal "
                                          "+ noisy), so the detector learns the attack, not 'any perturbation'.")


def sources_of(images: np.ndarray, y: np.ndarray, info: FitInfo | None) -> np.ndarray:
    """The source id of every row: the core's (``info.sources``), or without it each normal row
    its own and each adversarial row its nearest normal row in pixel space (its likely source)."""
    if info is not None:
        sources = np.asarray(info.sources)
        if len(sources) != len(images):
            raise DataError(f"fit info: {len(sources)} sources for {len(images)} images")
        return sources
    sources = np.arange(len(images))
    normal, adversarial = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    sources[adversarial] = normal[nearest_rows(images[adversarial], images[normal])]
    return sources


def nearest_rows(images: np.ndarray, candidates: np.ndarray, chunk: int = 256) -> np.ndarray:
    """For each image, the index of the nearest candidate in pixel space (L2)."""
    c = torch.from_numpy(candidates.reshape(len(candidates), -1)).double()
    out = []
    for start in range(0, len(images), chunk):
        a = torch.from_numpy(images[start:start + chunk].reshape(-1, c.shape[1])).double()
        out.append(torch.cdist(a, c).argmin(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def with_noisy(images: np.ndarray, y: np.ndarray, sources: np.ndarray,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows plus one noisy negative per adversarial row whose source's normal image is among
    them: that normal image plus Gaussian noise scaled to the adversarial perturbation's L2 norm,
    rounded to 8 bits (Feinman et al. 2017; Ma et al. 2018; Lee et al. 2018 match the average
    norm per attack, we match it per image). Returns (images, labels, sources), noisy rows last
    with label 0 and their source's id."""
    first_normal: dict = {}
    for row in np.flatnonzero(y == 0):
        first_normal.setdefault(sources[row].item(), row)
    adversarial = np.asarray([r for r in np.flatnonzero(y == 1) if sources[r].item() in first_normal], dtype=np.int64)
    if not len(adversarial):
        return images, y, sources
    base = images[[first_normal[sources[r].item()] for r in adversarial]].astype(np.float64)
    norms = np.sqrt(((images[adversarial].astype(np.float64) - base) ** 2).reshape(len(base), -1).sum(1))
    noise = np.random.default_rng(seed).standard_normal(base.shape)
    noise *= (norms / np.sqrt((noise ** 2).reshape(len(base), -1).sum(1)).clip(1e-12))[:, None, None, None]
    noisy = np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)
    return (np.concatenate([images, noisy]), np.concatenate([y, np.zeros(len(noisy), y.dtype)]),
            np.concatenate([sources, sources[adversarial]]))


def check_labels(labels: Any, n: int, who: str, need_both: bool = True) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64).ravel()
    if len(y) != n:
        raise DataError(f"{who}: {n} images but {len(y)} labels")
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{who}: labels must be 0 (normal) or 1 (adversarial), got {sorted(set(y.tolist()))}")
    if (y == 0).sum() < 2:
        raise DataError(f"{who}: fit needs at least 2 normal images (label 0), got {(y == 0).sum()}")
    if need_both and not (y == 1).any():
        raise DataError(f"{who}: fit needs adversarial images (label 1) beside the normal ones")
    return y


class LogisticHead:
    """Standardisation (mean/std of the training features) then a logistic regression fitted
    with scikit-learn's deterministic lbfgs; the decision function as a torch expression, so
    detector scores stay differentiable. Scores = log-odds of 'adversarial'; threshold 0."""

    def __init__(self, C: float = 1.0, balanced: bool = True):
        self.C, self.balanced = C, balanced
        self.mean = self.scale = self.coef = self.intercept = None

    def fit(self, features: torch.Tensor, labels: np.ndarray) -> LogisticHead:
        f = features.double().cpu()
        mean, scale = f.mean(0), f.std(0, unbiased=False)
        scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
        z = ((f - mean) / scale).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced" if self.balanced else None)
            lr.fit(z, labels)
        self.mean, self.scale = mean, scale
        self.coef = torch.from_numpy(lr.coef_[0].astype(np.float64))
        self.intercept = torch.tensor(float(lr.intercept_[0]), dtype=torch.float64)
        return self

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        d = features.device
        z = (features.double() - self.mean.to(d)) / self.scale.to(d)
        return z @ self.coef.to(d) + self.intercept.to(d)

    def state(self) -> dict[str, torch.Tensor]:
        return {"head.mean": self.mean, "head.scale": self.scale, "head.coef": self.coef,
                "head.intercept": self.intercept}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.scale = state["head.mean"], state["head.scale"]
        self.coef, self.intercept = state["head.coef"], state["head.intercept"]


class ModelDetector:
    """Base of the baseline detectors: label 1 = adversarial, scores grow with adversarial-ness."""

    name = "model-detector"

    def __init__(self, params: ModelDetectorParams, ctx: DetectorContext):
        if ctx is None or getattr(ctx, "model", None) is None:
            raise PluginError(f"{self.name} is a model-aware detector: build it with a DetectorContext holding "
                              "the classifier (DetectorSpec inputs = 'model')")
        self.params = params
        self.ctx = ctx
        self.module = ctx.model.module
        self.num_classes = int(ctx.model.num_classes)
        self.device = model_device(self.module, ctx.device)
        self.seed = int(ctx.seed)
        self.threshold = 0.0
        self.fitted = False
        self._last: tuple[Any, np.ndarray] | None = None

    # -- to implement ---------------------------------------------------------------------

    def _fit(self, images: np.ndarray, labels: np.ndarray, info: FitInfo | None) -> None:
        raise NotImplementedError

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- the Detector protocol ------------------------------------------------------------

    def fit(self, images: Any, labels: Any, info: FitInfo | None = None) -> ModelDetector:
        """Fit on uint8 images with labels (1 = adversarial); ``info`` (the core's, as the spec
        declares ``fit_info``): each row's source id and the labelled reference set."""
        images = as_images(images, self.name)
        self._fit(images, labels, info)
        self.fitted, self._last = True, None
        return self

    def scores(self, images: Any) -> np.ndarray:
        """(N,) float64; the last result is kept for the same array object, so predict() and
        scores() of one image set cost one pass."""
        self._check_fitted()
        if self._last is not None and self._last[0] is images:
            return self._last[1]
        arr = as_images(images, self.name)
        with torch.no_grad():
            parts = [self._score_batch(x).double().cpu() for x in image_batches(arr, self.params.batch_size, self.device)]
        result = torch.cat(parts).numpy() if parts else np.zeros(0)
        self._last = (images, result)
        return result

    def predict(self, images: Any) -> np.ndarray:
        return (self.scores(images) > self.threshold).astype(int)

    def torch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable scores of a float (N, 3, H, W) batch in [0, 1]; flagged when > threshold."""
        self._check_fitted()
        return self._score_batch(x.to(self.device)).to(x.dtype)

    # -- persistence: tensors and JSON, never pickle --------------------------------------

    def save(self, directory: str | Path) -> None:
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self._state().items()}
        state["threshold"] = torch.tensor(float(self.threshold), dtype=torch.float64)
        torch.save(state, directory / STATE_FILE)
        (directory / META_FILE).write_text(json.dumps({"detector": self.name, "params": self.params.model_dump()},
                                                      sort_keys=True))

    def load(self, directory: str | Path) -> ModelDetector:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise DataError(f"{self.name}: cannot read a saved detector from {directory}: {e}") from e
        mine = json.loads(json.dumps({"detector": self.name, "params": self.params.model_dump()}))
        if meta != mine:
            raise DataError(f"{self.name}: the detector saved in {directory} was fitted as {meta}, not {mine}")
        self.threshold = float(state.pop("threshold"))
        self._load_state(state)
        self.fitted, self._last = True, None
        return self

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name} is not fitted: call fit() first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, seed={self.seed})"
