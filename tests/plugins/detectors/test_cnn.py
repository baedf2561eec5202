import time

import numpy as np
import pytest
import torch

from advbench.errors import DataError
from advbench.registry import build_registry
from advbench_plugins.detectors import cnn_plugins
from advbench_plugins.detectors.cnn import (CNNDetector, CNNDetectorParams, build_network, logits_loss,
                                            softmax_layer_loss)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine is small and shared: one intra-op thread is several times faster there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def toy_images(n, seed, side=16):
    """Class 0: dark noise. Class 1: dark noise plus a bright checkerboard."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    x = rng.integers(0, 60, size=(n, side, side, 3)).astype(np.uint8)
    board = ((np.add.outer(np.arange(side), np.arange(side)) % 2) * 180).astype(np.uint8)
    x[y == 1] += board[None, :, :, None]
    return x, y


# --- the losses ------------------------------------------------------------------------------


def test_without_softmax_is_cross_entropy_on_logits_and_with_it_a_softmax_of_probabilities():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([0, 1])
    assert logits_loss(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    p = torch.softmax(logits, 1)
    by_hand = -torch.log_softmax(p, 1)[torch.arange(2), y].mean()
    assert softmax_layer_loss(logits, y).item() == pytest.approx(by_hand.item())
    # bounded whatever the logits: the softmax layer squeezes them into [0, 1] first
    huge = torch.tensor([[-50.0, 50.0], [50.0, -50.0]])
    assert softmax_layer_loss(huge, y).item() == pytest.approx(np.log1p(np.e))
    assert logits_loss(huge, y).item() == pytest.approx(100.0)


def test_nll_on_raw_logits_is_not_used_it_rewards_raising_every_logit():
    """Why eq. 3 is not read as ``nll_loss`` on raw logits: the loss drops by c when both logits
    of every image rise by c, telling the classes apart or not."""
    logits, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    nll = torch.nn.functional.nll_loss
    assert nll(logits + 10, y).item() == pytest.approx(nll(logits, y).item() - 10)
    assert logits_loss(logits + 10, y).item() == pytest.approx(logits_loss(logits, y).item())


def _margins_under_sgd(loss_fn, steps=100, lr=4.0):
    logits = torch.zeros(4, 2, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.SGD([logits], lr=lr)
    margins = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(logits, y).backward()
        opt.step()
        with torch.no_grad():  # true-class logit minus the other one, averaged
            margins.append((logits.gather(1, y[:, None]) - logits.gather(1, 1 - y[:, None])).mean().item())
    return np.array(margins)


def test_the_softmax_layer_slows_the_separation_of_the_logits():
    plain, layered = _margins_under_sgd(logits_loss), _margins_under_sgd(softmax_layer_loss)
    assert (np.diff(plain) > 0).all() and (np.diff(layered) > 0).all()
    assert layered[0] == pytest.approx(0.5 * plain[0])  # half the first step: the layer's slope is 1/4 at 0
    assert (layered < plain).all()  # and it never catches up


# --- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("softmax", [False, True], ids=["no-softmax", "softmax"])
def test_small_cnn_learns_a_separable_toy_set(softmax):
    x, y = toy_images(160, seed=0)
    xt, yt = toy_images(100, seed=1)
    start = time.perf_counter()
    det = CNNDetector(CNNDetectorParams(softmax=softmax, epochs=4, batch_size=32), seed=0).fit(x, y)
    elapsed = time.perf_counter() - start
    accuracy = float((det.predict(xt) == yt).mean())
    scores, logits = det.scores(xt), det.logits(xt)
    assert accuracy >= 0.95, (accuracy, det.history)
    assert logits.shape == (100, 2) and scores.shape == (100,) and det.predict(xt).dtype.kind == "i"
    assert ((scores >= 0) & (scores <= 1)).all()  # softmax at test time in both modes
    assert scores[yt == 1].mean() > scores[yt == 0].mean()
    assert np.array_equal(det.predict(xt), (scores > 0.5).astype(int))
    assert 1 <= det.best_epoch <= 4 and "dev_accuracy" in det.history[0]
    print(f"softmax={softmax}: accuracy {accuracy:.3f} in {elapsed:.1f}s")


def test_same_seed_same_scores_and_explicit_dev_set():
    x, y = toy_images(64, seed=2)
    dev = toy_images(32, seed=3)
    params = CNNDetectorParams(epochs=2, batch_size=16, balance=True, score="margin")
    a = CNNDetector(params, seed=7).fit(x, y, dev=dev)
    b = CNNDetector(params, seed=7).fit(x, y, dev=dev)
    c = CNNDetector(params, seed=8).fit(x, y, dev=dev)
    assert np.array_equal(a.scores(dev[0]), b.scores(dev[0]))
    assert not np.array_equal(a.scores(dev[0]), c.scores(dev[0]))
    assert [h["epoch"] for h in a.history] == [1, 2]
    np.testing.assert_allclose(a.scores(dev[0]), a.logits(dev[0]) @ [-1.0, 1.0])  # margin scores


def test_unfitted_detector_and_bad_shapes_are_errors():
    det = CNNDetector(CNNDetectorParams(epochs=1))
    with pytest.raises(RuntimeError, match="not fitted"):
        det.scores(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        det.fit(np.zeros((4, 6)), np.array([0, 1, 0, 1]))


# --- networks and weights --------------------------------------------------------------------


def test_big_networks_take_small_images_and_output_two_logits():
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        assert build_network("resnet50").eval()(x).shape == (2, 2)
        pytest.importorskip("timm")
        assert build_network("xception").eval()(x).shape == (2, 2)  # upsampled to 71 px inside


@pytest.mark.parametrize("arch, file_name", [("resnet50", "resnet50-"), ("xception", "xception-")])
def test_pretrained_without_local_weights_is_a_clear_data_error(empty_torch_home, arch, file_name):
    if arch == "xception":
        pytest.importorskip("timm")
    with pytest.raises(DataError) as info:
        CNNDetector(CNNDetectorParams(arch=arch, pretrained=True))
    message = str(info.value)
    assert file_name in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "pretrained = false" in message


def test_pretrained_resnet50_loads_the_local_file_and_gets_a_two_class_head(empty_torch_home):
    import torchvision

    source = torchvision.models.resnet50(weights=None)
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    name = torchvision.models.ResNet50_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(source.state_dict(), folder / name)
    net = build_network("resnet50", pretrained=True)
    resnet = net.net.net
    assert torch.equal(resnet.conv1.weight, source.conv1.weight)
    assert resnet.fc.out_features == 2


# --- registration ------------------------------------------------------------------------------


def test_plugins_register_image_detectors(empty_torch_home):
    registry = build_registry([(cnn_plugins, "advbench")])
    assert {"cnn-small", "cnn-resnet50", "cnn-xception"} <= set(registry.names("detector"))
    for name in ("cnn-small", "cnn-resnet50", "cnn-xception"):
        spec = registry.get("detector", name)
        assert spec.inputs == "images" and not spec.default
    small = registry.get("detector", "cnn-small")
    det = small.build(small.params(epochs=3), 5)
    assert isinstance(det, CNNDetector) and det.params.arch == "small-cnn" and det.seed == 5
    assert "pretrained" not in small.params.model_fields
    resnet = registry.get("detector", "cnn-resnet50")
    assert resnet.params().pretrained  # the paper fine-tunes ResNet-50 ...
    with pytest.raises(DataError, match="resnet50"):
        resnet.build(resnet.params(), 0)  # ... and the weights are not here
    assert not registry.get("detector", "cnn-xception").params().pretrained  # Xception from scratch


def test_predict_scores_and_logits_of_one_image_set_cost_one_network_pass(monkeypatch):
    x, y = toy_images(32, seed=4)
    det = CNNDetector(CNNDetectorParams(softmax=True, epochs=1, batch_size=16), seed=0).fit(x, y)
    passes = []
    real = det._eval_logits
    monkeypatch.setattr(det, "_eval_logits", lambda module, images: passes.append(len(images)) or real(module, images))
    det.predict(x), det.scores(x), det.logits(x)
    assert passes == [32]
    det.predict(x.copy())  # another array: computed again
    assert passes == [32, 32]


def test_a_cuda_device_without_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DataError, match=r"cnn-small.device = 'cuda' but no CUDA device is available"):
        CNNDetector(CNNDetectorParams(device="cuda"), seed=0, name="cnn-small")


def test_a_saved_detector_comes_back_and_its_torch_scores_are_differentiable(tmp_path):
    from advbench.imaging import to_tensor

    x, y = toy_images(64, seed=2)
    det = CNNDetector(CNNDetectorParams(epochs=2, batch_size=16, score="margin"), seed=0).fit(x, y)
    det.save(tmp_path)
    again = CNNDetector(CNNDetectorParams(epochs=2, batch_size=16, score="margin"), seed=5).load(tmp_path)
    assert np.array_equal(again.predict(x), det.predict(x))
    np.testing.assert_allclose(again.scores(x), det.scores(x), rtol=1e-5, atol=1e-5)
    batch = to_tensor(x[:8]).requires_grad_(True)
    margin = again.torch_scores(batch)
    np.testing.assert_allclose(margin.detach().numpy(), det.scores(x[:8]), rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad(margin.sum(), batch)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert np.array_equal((margin.detach().numpy() > again.threshold).astype(int), det.predict(x[:8]))
