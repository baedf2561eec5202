"""The paper's CNN detectors (§4, Table 6) as detector plugins that see the images themselves.

Each trains without the final softmax layer by default (cross-entropy on the logits);
``softmax = true`` gives the paper's baseline with a softmax layer (see ``cnn.py``). None is
in the default set: they train a network per dataset/model cell, which is costly next to the
statistical detectors.
"""

from __future__ import annotations

from pydantic import Field

from advbench.plugin import CostInputs, DetectorSpec, TrainingCost, hookimpl

from advbench_plugins.detectors.cnn import (
    CNNDetector,
    CNNDetectorParams,
    CNNTrainParams,
    PretrainableParams,
    build_network,
    resized,
)


class SmallCNNDetectorParams(CNNTrainParams):
    """A small 4-layer CNN trained from scratch (fast on CPU, for small images)."""


class ResNet50DetectorParams(PretrainableParams):
    """ResNet-50; fine-tuned from ImageNet weights by default (the paper's better ResNet setting)."""

    pretrained: bool = Field(True, description="Fine-tune from ImageNet weights read from the local torch hub "
                                               "cache (never downloaded); false = train from scratch.")


class XceptionDetectorParams(PretrainableParams):
    """Xception (timm legacy_xception); trained from scratch by default (the paper's best detector)."""


# "2": softmax = true/false mean a softmax layer under cross-entropy / cross-entropy on the
# logits (version 1 trained without softmax on nll of raw logits, which collapses)
LOSS_VERSION = "2"


def _builder(arch: str, name: str):
    def build(params: CNNTrainParams, seed: int) -> CNNDetector:
        return CNNDetector(CNNDetectorParams(arch=arch, **params.model_dump()), seed=seed, name=name)

    return build


def _cost(arch: str):
    def cost(params: CNNTrainParams, inputs: CostInputs) -> TrainingCost:
        """DetectorSpec.cost: the network (random weights, never a weight file) and ``epochs``, an
        upper bound (early stopping after ``patience`` epochs may end training sooner); images
        downscaled to ``max_side`` as ``fit`` does."""
        c, h, w = inputs.image_shape
        h, w = resized(h, w, params.max_side)
        return TrainingCost(network=build_network(arch, pretrained=False), epochs=params.epochs, image_shape=(c, h, w))

    return cost


#: fit with the dev split (early stopping), logits for Fig. 2, differentiable scores, saved weights
_ABILITIES = {"selects_on_dev": True, "has_logits": True, "differentiable": True, "saves": True}


@hookimpl
def advbench_register_detectors(register):
    register(DetectorSpec(
        name="cnn-small", summary="Small CNN on the images, trained from scratch without the final softmax (§4).",
        params=SmallCNNDetectorParams, build=_builder("small-cnn", "cnn-small"), inputs="images", version=LOSS_VERSION,
        cost=_cost("small-cnn"), **_ABILITIES))
    register(DetectorSpec(
        name="cnn-resnet50", summary="ResNet-50 on the images, fine-tuned from local ImageNet weights "
                                     "without the final softmax (§4, Table 6).",
        params=ResNet50DetectorParams, build=_builder("resnet50", "cnn-resnet50"), inputs="images",
        version=LOSS_VERSION, cost=_cost("resnet50"), **_ABILITIES))
    register(DetectorSpec(
        name="cnn-xception", summary="Xception on the images, trained from scratch without the final softmax "
                                     "(§4, Table 6: the best detector).",
        params=XceptionDetectorParams, build=_builder("xception", "cnn-xception"), inputs="images",
        version=LOSS_VERSION, cost=_cost("xception"), **_ABILITIES))
