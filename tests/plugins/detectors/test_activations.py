"""The activations helper reads the right layers of any classifier and leaves it as found."""

import pytest
import torch
import torchvision
from torch import nn

from advbench.errors import PluginError
from advbench.testing import tiny_model
from advbench_plugins.detectors.baselines.activations import (LOGITS, PENULTIMATE, ActivationProbe, last_linear,
                                                               reduce, select_layers, unwrap)
from advbench_plugins.models.cifar_resnet import cifar_resnet
from advbench_plugins.models.loading import IMAGENET_MEAN, IMAGENET_STD, Normalized


def no_hooks(module: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def test_children_of_the_tiny_model_step_through_its_wrapper_and_skip_flatten():
    module = tiny_model().module
    assert unwrap(module)[0] == "net."
    assert select_layers(module) == ["net.0", "net.1", "net.2", "net.3", "net.4", "net.5", "net.7"]
    assert last_linear(module) == "net.7"


def test_children_of_resnet20_inside_normalized_are_its_stages():
    module = Normalized(cifar_resnet(20), IMAGENET_MEAN, IMAGENET_STD).eval()
    assert select_layers(module) == ["net.conv1", "net.bn1", "net.layer1", "net.layer2", "net.layer3", "net.linear"]
    assert last_linear(module) == "net.linear"


def test_children_of_a_torchvision_resnet_and_its_penultimate_features():
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    assert select_layers(net) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                                  "avgpool", "fc"]
    probe = ActivationProbe(net, ["layer4"], penultimate=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = probe(x)
        expected = net.avgpool(out["layer4"]).flatten(1)
    assert out[PENULTIMATE].shape == (2, 512) and torch.allclose(out[PENULTIMATE], expected, atol=1e-6)
    assert no_hooks(net)


def test_probe_reads_layers_penultimate_and_logits_of_resnet20_and_removes_its_hooks():
    torch.manual_seed(0)
    module = Normalized(cifar_resnet(20), IMAGENET_MEAN, IMAGENET_STD).eval()
    probe = ActivationProbe(module, select_layers(module), penultimate=True)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = probe(x)
        logits = module(x)
        manual = module.net.layer3(module.net.layer2(module.net.layer1(
            torch.relu(module.net.bn1(module.net.conv1((x - module.mean) / module.std))))))
    # the final linear layer returns the logits: reported once, as "logits"
    assert list(out) == ["net.conv1", "net.bn1", "net.layer1", "net.layer2", "net.layer3", PENULTIMATE, LOGITS]
    assert torch.allclose(out["net.layer3"], manual, atol=1e-5)
    assert torch.allclose(out[PENULTIMATE], manual.mean((2, 3)), atol=1e-5)
    assert torch.allclose(out[LOGITS], logits, atol=1e-6)
    assert no_hooks(module) and not module.training


def test_layers_by_type_and_by_name_mix_without_duplicates():
    module = tiny_model().module
    assert select_layers(module, "Conv2d") == ["net.0", "net.3"]
    assert select_layers(module, "net.3, Conv2d, ReLU") == ["net.3", "net.0", "net.1", "net.4"]
    assert select_layers(module, "children,Conv2d") == select_layers(module)


def test_an_unknown_layer_is_a_one_line_error_listing_valid_names():
    with pytest.raises(PluginError, match=r"no module or module type 'conv9'.*valid: children, net"):
        select_layers(tiny_model().module, "conv9")


def test_a_classifier_without_a_linear_layer_has_no_penultimate_features():
    with pytest.raises(PluginError, match="no nn.Linear"):
        ActivationProbe(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), penultimate=True)


def test_gradients_flow_through_the_activations():
    module = tiny_model().module
    probe = ActivationProbe(module, ["net.3"], penultimate=True)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = probe(x)
    (out["net.3"].sum() + out[PENULTIMATE].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_reduce_flattens_or_averages_feature_maps():
    t = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert reduce(t, "flatten").shape == (2, 12)
    assert torch.equal(reduce(t, "mean"), t.mean((2, 3)))
    v = torch.ones(2, 5)
    assert torch.equal(reduce(v, "mean"), v)
