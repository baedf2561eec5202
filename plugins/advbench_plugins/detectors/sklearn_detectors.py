"""The paper's four statistical detectors (§3.2.3), from scikit-learn, with standard scaling.

Linear discriminant analysis (Fisher 1936) is made robust to degenerate features, which the
paper's image-processing features produce readily: a one-operation group gives count features
in {0, 1} that are often constant, or constant within each class. There scikit-learn's SVD
solver crashes (IndexError: the pooled within-class scatter has rank 0) or silently discards
the one direction that separates the classes; :class:`LDADetector` then uses the same
discriminant with a small ridge added to the within-class covariance (regularised LDA,
Friedman 1989), whose limit is the nearest-class-mean rule in those directions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import warnings

import numpy as np
import skops.io as skops_io
from pydantic import Field
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from advbench.plugin import DetectorSpec, Params, PluginError


class SklearnDetector:
    """Adapts a scikit-learn classifier to advbench's Detector protocol."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, features: np.ndarray, labels: np.ndarray) -> SklearnDetector:
        with warnings.catch_warnings():  # an MLP stopping at max_iter is expected, not news
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator.fit(features, labels)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(features)).astype(int)

    def scores(self, features: np.ndarray) -> np.ndarray:
        if hasattr(self.estimator, "decision_function"):
            return np.asarray(self.estimator.decision_function(features), dtype=float)
        return np.asarray(self.estimator.predict_proba(features)[:, 1], dtype=float)

    # skops' format holds no pickled code: loading trusts only scikit-learn's and numpy's own types
    def save(self, directory: Path) -> None:
        skops_io.dump(self.estimator, directory / "estimator.skops")

    def load(self, directory: Path) -> SklearnDetector:
        path = directory / "estimator.skops"
        untrusted = skops_io.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy."))]
        if foreign:
            raise PluginError(f"{path}: holds types other than scikit-learn's ({', '.join(foreign)}); not loaded")
        self.estimator = skops_io.load(path, trusted=untrusted)
        return self


#: ridge added to the within-class covariance of standardised features (unit total variance)
RIDGE = 1e-6
#: an eigenvalue of the standardised within-class scatter at most this is zero
SINGULAR = 1e-10


def scatter_defects(x: np.ndarray, y: np.ndarray) -> tuple[bool, bool]:
    """(singular, degenerate) for LDA of standardised ``x`` with labels ``y``. Singular: the
    pooled within-class scatter has a zero eigenvalue (constant or duplicated columns; the
    eigen solver needs it positive definite). Degenerate: the scatter is zero, or singular in a
    direction in which the class means differ (a direction that separates the classes without
    error), where the SVD solver crashes or discards that direction."""
    classes, index = np.unique(y, return_inverse=True)
    means = np.stack([x[index == i].mean(axis=0) for i in range(len(classes))])
    within = x - means[index]
    values, vectors = np.linalg.eigh(within.T @ within / len(x))
    null = vectors[:, values <= SINGULAR]
    if null.shape[1] == x.shape[1]:
        return True, True
    spread = (means - means.mean(axis=0)) @ null  # the class means, inside the null space
    return null.shape[1] > 0, bool(np.abs(spread).max(initial=0.0) > np.sqrt(SINGULAR))


class _RidgeCovariance:
    """Empirical covariance plus ``ridge`` on the diagonal (scikit-learn's covariance_estimator API)."""

    def __init__(self, ridge: float):
        self.ridge = ridge

    def fit(self, x: np.ndarray) -> _RidgeCovariance:
        centred = x - x.mean(axis=0)
        self.covariance_ = centred.T @ centred / len(x) + self.ridge * np.eye(x.shape[1])
        return self


class LDADetector(SklearnDetector):
    """Standard-scaled LDA with the chosen solver; on degenerate features (and for the eigen
    solver on singular ones, see :func:`scatter_defects`) the least-squares solver on a
    ridge-regularised covariance. ``regularised`` says which was fitted."""

    def __init__(self, solver: str):
        super().__init__(make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver=solver)))
        self.solver = solver
        self.regularised = False

    def fit(self, features: np.ndarray, labels: np.ndarray) -> LDADetector:
        x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
        singular, degenerate = scatter_defects(x, np.asarray(labels))
        self.regularised = degenerate or (singular and self.solver == "eigen")
        if self.regularised:
            lda = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=_RidgeCovariance(RIDGE))
        else:
            lda = LinearDiscriminantAnalysis(solver=self.solver)
        self.estimator = make_pipeline(StandardScaler(), lda)
        super().fit(features, labels)
        # fitted, the discriminant is coef_ and intercept_: drop the ridge estimator (not a
        # scikit-learn type) so that the saved pipeline holds scikit-learn's types only
        lda.covariance_estimator = None
        return self


class SVMParams(Params):
    C: float = Field(1.0, gt=0, description="Regularisation of the C-SVC.")
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = Field("rbf", description="SVC kernel.")
    gamma: Literal["scale", "auto"] | float = Field("scale", description="Kernel coefficient.")


class ForestParams(Params):
    n_estimators: int = Field(100, ge=1, description="Trees (the paper: 100).")
    max_depth: int | None = Field(2, ge=1, description="Tree depth (the paper: 2).")


class LDAParams(Params):
    solver: Literal["svd", "lsqr", "eigen"] = Field("svd", description="LDA solver.")


class MLPParams(Params):
    hidden_layer_sizes: list[int] = Field([100], description="Hidden layer widths (scikit-learn default).")
    max_iter: int = Field(500, ge=1, description="Training epochs at most.")
    alpha: float = Field(1e-4, ge=0, description="L2 penalty.")


def _svm(p: SVMParams, seed: int):
    return SklearnDetector(make_pipeline(StandardScaler(), SVC(C=p.C, kernel=p.kernel, gamma=p.gamma, random_state=seed)))


def _forest(p: ForestParams, seed: int):  # trees need no scaling
    return SklearnDetector(RandomForestClassifier(n_estimators=p.n_estimators, max_depth=p.max_depth, random_state=seed))


def _lda(p: LDAParams, seed: int):
    return LDADetector(p.solver)


def _mlp(p: MLPParams, seed: int):
    return SklearnDetector(make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=tuple(p.hidden_layer_sizes), max_iter=p.max_iter, alpha=p.alpha, random_state=seed)))


#: fitted on features, without dev (the core's dev-set search chooses among them), saved with skops
_ABILITIES = {"selects_on_dev": False, "has_logits": False, "differentiable": False, "saves": True}
DETECTORS = [
    DetectorSpec(name="svm", summary="C-support vector classifier (RBF), standard-scaled.",
                 params=SVMParams, default=True, build=_svm, **_ABILITIES),
    DetectorSpec(name="random-forest", summary="Random forest, 100 trees of depth 2 (as the paper).",
                 params=ForestParams, default=True, build=_forest, **_ABILITIES),
    DetectorSpec(name="lda", summary="Linear discriminant analysis, standard-scaled.",
                 params=LDAParams, default=True, build=_lda, **_ABILITIES),
    DetectorSpec(name="mlp", summary="Multi-layer perceptron (scikit-learn defaults), standard-scaled.",
                 params=MLPParams, default=True, build=_mlp, **_ABILITIES),
]
