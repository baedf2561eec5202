"""The paper's four statistical detectors (§3.2.3), from scikit-learn, with standard scaling."""

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

from advbench import hookimpl
from advbench.errors import PluginError
from advbench.specs import DetectorSpec, Params


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
    return SklearnDetector(make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver=p.solver)))


def _mlp(p: MLPParams, seed: int):
    return SklearnDetector(make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=tuple(p.hidden_layer_sizes), max_iter=p.max_iter, alpha=p.alpha, random_state=seed)))


@hookimpl
def advbench_register_detectors(register):
    register(DetectorSpec(name="svm", summary="C-support vector classifier (RBF), standard-scaled.",
                          params=SVMParams, default=True, build=_svm))
    register(DetectorSpec(name="random-forest", summary="Random forest, 100 trees of depth 2 (as the paper).",
                          params=ForestParams, default=True, build=_forest))
    register(DetectorSpec(name="lda", summary="Linear discriminant analysis, standard-scaled.",
                          params=LDAParams, default=True, build=_lda))
    register(DetectorSpec(name="mlp", summary="Multi-layer perceptron (scikit-learn defaults), standard-scaled.",
                          params=MLPParams, default=True, build=_mlp))
