"""CIFAR ResNets, checkpoint loading, torchvision weights from the local cache, prepare policies."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from advbench.errors import DataError
from advbench_plugins.datasets.folders import ImageFolderSource
from advbench_plugins.models.cifar_resnet import cifar_resnet
from advbench_plugins.models.loading import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalized,
    imagenet_prepare,
    load_checkpoint,
    resize_prepare,
    torchvision_classifier,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
CIFAR_CKPT = SHARED / "models" / "resnet20-cifar10-12fca82f.th"
CIFAR_DATA = SHARED / "data" / "cifar10-test-1000"


# --- CIFAR ResNet --------------------------------------------------------------------------


@pytest.mark.parametrize("depth, blocks", [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_cifar_resnet_shapes(depth: int, blocks: int) -> None:
    net = cifar_resnet(depth, num_classes=7).eval()
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == blocks
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # stem + 6n block convs + linear
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(net.linear, nn.Linear) and net.linear.in_features == 64


def test_cifar_resnet_rejects_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_option_a_shortcut_has_no_parameters() -> None:
    keys = cifar_resnet(20).state_dict().keys()
    assert not [k for k in keys if "shortcut" in k or "downsample" in k]


@pytest.mark.skipif(not CIFAR_CKPT.is_file(), reason=f"shared checkpoint absent: {CIFAR_CKPT}")
def test_shared_resnet20_loads_strictly() -> None:
    raw = torch.load(CIFAR_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    state = load_checkpoint(CIFAR_CKPT, cifar_resnet(20)).state_dict()
    # The checkpoint predates BatchNorm's num_batches_tracked; torch fills those in itself.
    assert {k for k in state if not k.endswith("num_batches_tracked")} == {k.removeprefix("module.") for k in raw}
    assert all(torch.equal(state[k.removeprefix("module.")], v) for k, v in raw.items())


@pytest.mark.skipif(
    not (CIFAR_CKPT.is_file() and CIFAR_DATA.is_dir()), reason=f"shared data absent: {CIFAR_CKPT}, {CIFAR_DATA}"
)
@pytest.mark.slow  # a ResNet-20 on 1,000 images
def test_shared_resnet20_accuracy() -> None:
    """README: top-1 80.4%, top-5 99.0% on the 1000 shared JPEGs (ToTensor only, [0, 1])."""
    model = Normalized(load_checkpoint(CIFAR_CKPT, cifar_resnet(20)), IMAGENET_MEAN, IMAGENET_STD).eval()
    source = ImageFolderSource(CIFAR_DATA)
    samples = list(source)
    assert len(samples) == 1000 and source.skipped == 0 and len(source.class_names) == 10
    prepare = resize_prepare(32)
    x = torch.stack([_to_tensor(prepare(s.image)) for s in samples])
    y = torch.tensor([s.label for s in samples])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    top1_acc = (top5[:, 0] == y).float().mean().item()
    top5_acc = (top5 == y[:, None]).any(dim=1).float().mean().item()
    assert abs(top1_acc - 0.804) <= 0.010, top1_acc
    assert top5_acc >= 0.98, top5_acc


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor for RGB images: (3, H, W) float in [0, 1]."""
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(
        2, 0, 1
    ).float() / 255.0


# --- Normalized ----------------------------------------------------------------------------


def test_normalized_applies_mean_std_and_adds_no_state() -> None:
    inner = nn.Identity()
    net = Normalized(inner, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    out = net(torch.ones(1, 3, 2, 2))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    assert list(net.state_dict()) == []


# --- load_checkpoint -----------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, out: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _save(path: Path, net: nn.Module, *, prefix: str = "module.", key: str | None = "state_dict") -> Path:
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({key: state, "best_prec1": 91.0} if key else state, path)
    return path


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("key, explicit", [("state_dict", False), ("model", False), (None, False), ("ema", True)])
def test_load_checkpoint_round_trip(tmp_path: Path, key: str | None, explicit: bool) -> None:
    src = Tiny()
    src.bn.running_mean.uniform_()  # buffers must come back too
    path = _save(tmp_path / "tiny.pt", src, key=key)
    dst = load_checkpoint(path, Tiny(), key=key if explicit else None)
    assert _same(src, dst)


def test_load_checkpoint_without_prefix(tmp_path: Path) -> None:
    src = Tiny()
    path = _save(tmp_path / "plain.pt", src, prefix="")
    assert _same(src, load_checkpoint(path, Tiny()))


def test_load_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", Tiny())


def test_load_checkpoint_key_mismatch_message(tmp_path: Path) -> None:
    class Other(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 2)
            del self.fc

    path = _save(tmp_path / "tiny.pt", Tiny())
    with pytest.raises(DataError) as err:
        load_checkpoint(path, Other())
    msg = str(err.value)
    assert "\n" not in msg and "tiny.pt" in msg
    assert "missing keys: head.weight, head.bias" in msg
    assert "unexpected keys: fc.weight, fc.bias" in msg


def test_load_checkpoint_shape_mismatch_and_garbage(tmp_path: Path) -> None:
    path = _save(tmp_path / "tiny.pt", Tiny(out=3))
    with pytest.raises(DataError, match="tiny.pt .*size mismatch") as err:
        load_checkpoint(path, Tiny(out=5))
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt is not a readable weights checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", Tiny())
    with pytest.raises(DataError, match="no key 'weights'"):
        load_checkpoint(path, Tiny(), key="weights")


class Pickled:
    """Stands for any object a checkpoint may pickle besides tensors (a whole model, an optimiser)."""


def _unreadable(kind: str, path: Path) -> Path:
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated shared checkpoint":
        if not CIFAR_CKPT.is_file():
            pytest.skip(f"shared checkpoint absent: {CIFAR_CKPT}")
        data = CIFAR_CKPT.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated zip checkpoint":
        _save(path, Tiny())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "object in torch.save":
        torch.save({"state_dict": Tiny().state_dict(), "extra": Pickled()}, path)
    elif kind == "object in pickle":
        import pickle

        path.write_bytes(pickle.dumps({"net": Pickled()}))
    elif kind == "text":
        path.write_text("conv.weight: 0.1 0.2 0.3\n")
    elif kind == "empty":
        path.write_bytes(b"")
    return path


UNREADABLE = {
    "random bytes": "not a PyTorch file",
    "truncated shared checkpoint": "truncated or damaged torch.save file",
    "truncated zip checkpoint": "truncated or damaged torch.save file",
    "object in torch.save": "holds a pickled test_models.Pickled object",
    "object in pickle": "is a pickle, not a torch.save file",
    "text": "not a PyTorch file",
    "empty": "the file is empty",
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_checkpoint_is_one_line_that_never_advises_unpickling(tmp_path: Path, kind: str) -> None:
    """The file, that it is not a readable weights checkpoint, what it looks like and what is
    expected; never torch's advice to retry with weights_only=False (the traceback neither)."""
    path = _unreadable(kind, tmp_path / "weights.pt")
    with pytest.raises(DataError) as err:
        load_checkpoint(path, Tiny())
    msg = str(err.value)
    assert f"{path} is not a readable weights checkpoint" in msg and UNREADABLE[kind] in msg, msg
    assert "expected a file written by torch.save holding only tensors" in msg
    assert "\n" not in msg and "weights_only" not in msg and "trust" not in msg
    assert err.value.__cause__ is None and err.value.__context__ is None  # torch's message stays out of logs


# --- torchvision ---------------------------------------------------------------------------


def test_torchvision_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(DataError, match="unknown torchvision model 'resnet51'.*resnet50"):
        torchvision_classifier("resnet51", None)


def test_torchvision_random_init_is_normalized() -> None:
    net = torchvision_classifier("squeezenet1_1", None)
    assert isinstance(net, Normalized)
    assert torch.allclose(net.mean.flatten(), torch.tensor(IMAGENET_MEAN))


def test_torchvision_weights_missing_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(DataError) as err:
        torchvision_classifier("resnet18", "DEFAULT", tmp_path / "cache")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(folder) in msg and "\n" not in msg
    with pytest.raises(DataError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        torchvision_classifier("resnet18", "IMAGENET9K", None)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty hub cache in a temporary TORCH_HOME, torch.hub's loader (which unpickles with
    weights_only=False and downloads) forbidden, and every torch.load call's keywords recorded."""
    import torchvision.models._api as api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"torch.hub.load_state_dict_from_url called: {args}")

    monkeypatch.setattr(api, "load_state_dict_from_url", forbidden)
    calls: list[dict] = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return folder, calls


def test_torchvision_weights_load_from_hub_cache(hub) -> None:
    import torchvision

    folder, calls = hub
    ref = torchvision.models.squeezenet1_1()
    torch.save(ref.state_dict(), folder / "squeezenet1_1-b8a52dc0.pth")  # stands in for the real file
    for name in ("IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", "DEFAULT"):
        net = torchvision_classifier("squeezenet1_1", name, None)
        assert isinstance(net, Normalized) and _same(ref, net.net)
    assert len(calls) == 3 and all(c.get("weights_only") is True for c in calls)
    assert "get_state_dict" not in torchvision.models.SqueezeNet1_1_Weights.__dict__  # the enum is as it was


def test_torchvision_weights_keep_the_settings_that_go_with_them(hub) -> None:
    """GoogLeNet's weights set transform_input and are saved with the auxiliary heads, which the
    builder drops after loading: torchvision's builder still applies its settings."""
    import torchvision

    folder, calls = hub
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(ref.state_dict(), folder / "googlenet-1378be20.pth")
    net = torchvision_classifier("googlenet", "DEFAULT").net
    assert net.transform_input and net.aux1 is None and net.aux2 is None
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in net.state_dict().items())
    assert calls and all(c.get("weights_only") is True for c in calls)


@pytest.mark.parametrize("kind", ["object in torch.save", "truncated zip checkpoint"])
def test_torchvision_unreadable_weights_file_is_one_line(hub, kind: str) -> None:
    folder, _ = hub
    path = _unreadable(kind, folder / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(DataError) as err:
        torchvision_classifier("squeezenet1_1", "DEFAULT")
    msg = str(err.value)
    assert f"weights file {path} is not a readable weights checkpoint" in msg and UNREADABLE[kind] in msg
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in msg
    assert "\n" not in msg and "weights_only" not in msg


def test_torchvision_weights_of_another_network_do_not_fit(hub) -> None:
    folder, _ = hub
    torch.save(Tiny().state_dict(), folder / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(DataError, match="squeezenet1_1-b8a52dc0.pth does not fit torchvision squeezenet1_1: .*Missing key"):
        torchvision_classifier("squeezenet1_1", "DEFAULT")


# --- prepare -------------------------------------------------------------------------------


def test_imagenet_prepare_matches_torchvision() -> None:
    import torchvision.transforms as T

    img = Image.effect_mandelbrot((300, 400), (-2, -1.5, 1, 1.5), 50).convert("RGB")
    ref = T.Compose([T.Resize(256), T.CenterCrop(224)])
    for im in (img, img.transpose(Image.Transpose.TRANSPOSE)):
        out = imagenet_prepare()(im)
        assert out.size == (224, 224) and out.tobytes() == ref(im).tobytes()


def test_resize_prepare() -> None:
    img = Image.new("RGB", (32, 32), (1, 2, 3))
    assert resize_prepare(32)(img) is img
    assert resize_prepare((20, 40))(Image.new("RGB", (100, 50))).size == (40, 20)


@pytest.mark.parametrize("arch, message", [("resnet5", "did you mean resnet50"), ("cifar_resnetx", r"depth 6n\+2"),
                                           ("cifar_resnet21", r"depth 6n\+2")])
def test_a_bad_checkpoint_arch_is_a_data_error_at_any_class_count(tmp_path: Path, arch: str, message: str) -> None:
    from advbench.registry import discover
    from advbench.specs import BuildContext

    spec = discover().get("model", "checkpoint")
    params = spec.params(path=str(tmp_path / "w.th"), arch=arch, num_classes=10)
    with pytest.raises(DataError, match=message):
        spec.build(params, BuildContext(cache_dir=tmp_path, device="cpu", seed=0))
