"""Registers the baseline detectors (see docs/detectors.md). None is in the default set: each
needs the classifier (``inputs = "model"``) and they are comparisons, not the paper's method."""

from __future__ import annotations

from advbench.plugin import DetectorSpec, hookimpl

from advbench_plugins.detectors.baselines.feature_squeezing import FeatureSqueezing, FeatureSqueezingParams
from advbench_plugins.detectors.baselines.kernel_density import KernelDensity, KernelDensityParams
from advbench_plugins.detectors.baselines.lid import LID, LIDParams
from advbench_plugins.detectors.baselines.mahalanobis import Mahalanobis, MahalanobisParams

#: each offers differentiable scores (torch_scores, threshold) and saves itself as tensors
_ABILITIES = {"selects_on_dev": False, "has_logits": False, "differentiable": True, "saves": True}
DETECTORS = [
    DetectorSpec(name="feature-squeezing", inputs="model", version="2", params=FeatureSqueezingParams,
                 build=FeatureSqueezing, select_by="auroc",
                 summary="Feature squeezing: L1 change of the softmax under bit-depth reduction, median filtering "
                         "and non-local means, threshold at 5 % FPR on normal images (Xu et al. 2018).", **_ABILITIES),
    DetectorSpec(name="kernel-density", inputs="model", version="3", params=KernelDensityParams, build=KernelDensity,
                 fit_info=True, select_by="auroc",
                 summary="Kernel density of penultimate features and MC-dropout uncertainty under a logistic "
                         "regression (Feinman et al. 2017).", **_ABILITIES),
    DetectorSpec(name="lid", inputs="model", version="3", params=LIDParams, build=LID, fit_info=True,
                 select_by="auroc",
                 summary="Local intrinsic dimensionality of every block's activations, the logits and the softmax "
                         "against a normal minibatch, logistic regression (Ma et al. 2018).", **_ABILITIES),
    DetectorSpec(name="mahalanobis", inputs="model", version="3", params=MahalanobisParams, build=Mahalanobis,
                 fit_info=True, select_by="auroc",
                 summary="Mahalanobis confidence of the stem and every stage under class-conditional tied Gaussians, "
                         "logistic regression (Lee et al. 2018).", **_ABILITIES),
]


@hookimpl
def advbench_register_detectors(register):
    for spec in DETECTORS:
        register(spec)
