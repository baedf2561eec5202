"""Registers the pretrained classifiers: the paper's four torchvision models, any torchvision
model by name, the CIFAR ResNet family and a local-checkpoint loader."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from advbench.plugin import BuildContext, DataError, LoadedModel, ModelSpec, Params, hookimpl

from advbench_plugins.models.cifar_resnet import cifar_resnet
from advbench_plugins.models.loading import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalized,
    check_arch,
    imagenet_prepare,
    load_checkpoint,
    resize_prepare,
    torchvision_classifier,
    torchvision_weights_file,
)


class TorchvisionParams(Params):
    weights: str | None = Field("DEFAULT", description="torchvision weights name (from the local torch hub cache); null = random.")
    resize: int = Field(256, ge=8, description="Shorter side before the centre crop.")
    crop: int = Field(224, ge=8, description="Centre crop = input size.")
    num_classes: int = Field(1000, ge=2, description="Output classes.")


class AnyTorchvisionParams(TorchvisionParams):
    arch: str = Field(description="Any torchvision classification model name, e.g. 'efficientnet_b0'.")


def _torchvision(arch: str, p: TorchvisionParams, weights: bool = True) -> LoadedModel:
    net = torchvision_classifier(arch, p.weights if weights else None)
    return LoadedModel(module=net.eval(), input_size=(p.crop, p.crop), num_classes=p.num_classes,
                       prepare=imagenet_prepare(p.resize, p.crop), fingerprint=f"{arch}:{p.weights if weights else None}")


class CifarResNetParams(Params):
    depth: Literal[20, 32, 44, 56] = Field(20, description="6n+2 layers.")
    checkpoint: str | None = Field(None, description="State-dict file (torch.load weights_only); null = random init.")
    strip_prefix: str = Field("module.", description="Prefix removed from state-dict keys.")
    num_classes: int = Field(10, ge=2, description="Output classes.")
    size: int = Field(32, ge=8, description="Input side in pixels.")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="Input normalisation mean.")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="Input normalisation std.")


def _cifar(p: CifarResNetParams, ctx: BuildContext, weights: bool = True) -> LoadedModel:
    net = cifar_resnet(p.depth, p.num_classes)
    if p.checkpoint and weights:
        load_checkpoint(p.checkpoint, net, strip_prefix=p.strip_prefix)
    return LoadedModel(module=Normalized(net, p.mean, p.std).eval(), input_size=(p.size, p.size),
                       num_classes=p.num_classes, prepare=resize_prepare(p.size), fingerprint=str(p.checkpoint))


class CheckpointParams(Params):
    path: str = Field(description="Checkpoint file, read with torch.load(weights_only=True).")
    arch: str = Field(description="torchvision architecture name, or cifar_resnet20/32/44/56.")
    key: str | None = Field(None, description="Dict key holding the state dict (auto: state_dict/model/raw).")
    strip_prefix: str = Field("module.", description="Prefix removed from state-dict keys.")
    num_classes: int = Field(1000, ge=2, description="Output classes.")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="Input normalisation mean.")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="Input normalisation std.")
    resize: int = Field(256, ge=8, description="Shorter side before the centre crop.")
    crop: int = Field(224, ge=8, description="Centre crop = input size (resize = crop: plain resize).")


def _checkpoint(p: CheckpointParams, ctx: BuildContext, weights: bool = True) -> LoadedModel:
    import torchvision

    if p.arch.startswith("cifar_resnet"):
        depth = p.arch.removeprefix("cifar_resnet")
        try:
            net = cifar_resnet(int(depth), p.num_classes)
        except ValueError:
            raise DataError(f"arch {p.arch!r}: a CIFAR ResNet is cifar_resnet<depth> with depth 6n+2 (cifar_resnet20, "
                            "32, 44, 56, 110...)") from None
    else:
        check_arch(p.arch)
        net = torchvision_classifier(p.arch, None).net if p.num_classes == 1000 else \
            torchvision.models.get_model(p.arch, num_classes=p.num_classes)
    if weights:
        load_checkpoint(p.path, net, key=p.key, strip_prefix=p.strip_prefix)
    prepare = resize_prepare(p.crop) if p.resize == p.crop else imagenet_prepare(p.resize, p.crop)
    return LoadedModel(module=Normalized(net, p.mean, p.std).eval(), input_size=(p.crop, p.crop),
                       num_classes=p.num_classes, prepare=prepare, fingerprint=p.path)


PAPER_MODELS = ("vgg16", "vgg19", "resnet18", "resnet50")


def _check_torchvision(arch: str, p: TorchvisionParams) -> None:
    """The architecture exists and its weights file is in the hub cache (not read: hundreds of MB)."""
    if p.weights is None:
        check_arch(arch)
    else:
        torchvision_weights_file(arch, p.weights)


def _check_cifar(p: CifarResNetParams) -> None:
    """The checkpoint loads and fits the network (missing, corrupt or of another depth)."""
    if p.checkpoint:
        _cifar(p, None)


@hookimpl
def advbench_register_models(register):
    for arch in PAPER_MODELS:
        register(ModelSpec(name=arch, summary=f"torchvision {arch} with ImageNet weights from the local torch hub cache.",
                           params=TorchvisionParams, build=lambda p, ctx, a=arch: _torchvision(a, p),
                           architecture=lambda p, a=arch: _torchvision(a, p, weights=False),
                           check=lambda p, a=arch: _check_torchvision(a, p)))
    register(ModelSpec(name="torchvision", summary="Any torchvision classification model by name ('arch').",
                       params=AnyTorchvisionParams, build=lambda p, ctx: _torchvision(p.arch, p),
                       architecture=lambda p: _torchvision(p.arch, p, weights=False),
                       check=lambda p: _check_torchvision(p.arch, p)))
    register(ModelSpec(name="cifar-resnet", summary="CIFAR ResNet-20/32/44/56 (He et al., option-A shortcuts).",
                       params=CifarResNetParams, build=_cifar, architecture=lambda p: _cifar(p, None, weights=False),
                       check=_check_cifar))
    register(ModelSpec(name="checkpoint", summary="A local state-dict checkpoint for a torchvision or CIFAR ResNet architecture.",
                       params=CheckpointParams, build=_checkpoint, architecture=lambda p: _checkpoint(p, None, weights=False),
                       check=lambda p: _checkpoint(p, None)))
