"""The prediction engine: results identical to a plain reference loop, bounded memory, full
probability vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn

from advbench.engine import predict
from advbench.errors import PluginError
from advbench.engine.predict import predict_under_operation, predict_under_operations, topk_misclassified
from advbench.imaging import to_tensor
from advbench.specs import LoadedModel

NUM_CLASSES = 7


def _jpeg(image: Image.Image) -> Image.Image:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=60)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


PILLOW_OPS = {
    "jpeg": _jpeg,
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=2)),
    "rotate": lambda im: im.rotate(-5, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)),
    "scale": lambda im: im.resize((9, 9), resample=Image.Resampling.BILINEAR),  # size changes
    "gray": lambda im: im.convert("L"),  # a non-RGB result: the engine converts it to RGB
}


def _tensor_op(batch: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(batch, 3, stride=1, padding=1) * 1.1  # > 1 here and there: clamped


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second OpenMP thread, and on a busy machine its barrier
    spin-waiting makes every forward pass slow; the one test that needs 2 threads says so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
    ).eval()
    return LoadedModel(module=net, input_size=(12, 12), num_classes=NUM_CLASSES, prepare=lambda im: im)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    rng = np.random.default_rng(0)
    path = Path(tmp_path_factory.mktemp("engine")) / "images.npy"
    np.save(path, rng.integers(0, 256, size=(11, 12, 12, 3), dtype=np.uint8))
    return np.load(path, mmap_mode="r")


def _reference(model: LoadedModel, images: np.ndarray, *, top_k: int, batch_size: int, op=None, tensor_op=None,
               reference=None) -> dict[str, np.ndarray]:
    """The straightforward loop: chunk by chunk, image by image, no threads."""
    k = min(top_k, model.num_classes)
    labels, probs, full = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            part = np.asarray(images[start:start + batch_size])
            if op is not None:
                part = np.stack([np.asarray(op(Image.fromarray(a, mode="RGB")).convert("RGB")) for a in part])
            batch = to_tensor(part)
            if tensor_op is not None:
                batch = tensor_op(batch).clamp_(0, 1)
            p = torch.softmax(model.module(batch).float(), dim=1)
            top = p.topk(k, dim=1)
            full.append(p.numpy().astype(np.float16))
            labels.append(top.indices.numpy().astype(np.int32))
            if reference is None:
                probs.append(top.values.numpy())
            else:
                ref = torch.from_numpy(np.asarray(reference[start:start + len(part)], dtype=np.int64))
                probs.append(p.gather(1, ref).numpy())
    return {"labels": np.concatenate(labels), "probs": np.concatenate(probs).astype(np.float32),
            "full": np.concatenate(full)}


def _assert_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == {"labels", "probs", "full"}
    assert got["labels"].dtype == np.int32 and got["probs"].dtype == np.float32 and got["full"].dtype == np.float16
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["probs"].tobytes() == want["probs"].tobytes()  # bit for bit
    assert got["full"].tobytes() == want["full"].tobytes()


@pytest.fixture
def pillow_threads_on_small_images(monkeypatch):
    """The test images are 12x12: spread their Pillow work over threads all the same."""
    monkeypatch.setattr(predict, "_PARALLEL_PILLOW_PIXELS", 1)


@pytest.mark.parametrize("op_name", [None, *PILLOW_OPS])
@pytest.mark.parametrize("batch_size, threads", [(4, 2), (64, 1), (2, 3), (11, 4), (5, 2)])
def test_pillow_backend_matches_reference_loop(model, images, op_name, batch_size, threads,
                                               pillow_threads_on_small_images) -> None:
    _check_pillow_backend(model, images, op_name, batch_size, threads)


def test_small_images_are_prepared_in_one_thread(images) -> None:
    small = predict._Preparer(images, 4, "cpu", threads=4, pillow=True)
    large = predict._Preparer(np.zeros((2, 64, 64, 3), np.uint8), 4, "cpu", threads=4, pillow=True)
    tensor = predict._Preparer(np.zeros((2, 64, 64, 3), np.uint8), 4, "cpu", threads=4, pillow=False)
    try:
        assert small.helpers == 0 and small.pool is None
        assert large.helpers == 3 and tensor.helpers == 0
    finally:
        for p in (small, large, tensor):
            p.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_uint8_batches_for_other_devices(images, threads, pillow_threads_on_small_images) -> None:
    """Off the CPU the Pillow results are gathered as uint8 and converted on the device."""
    prepare = predict._Preparer(images, 8, "cpu", threads=threads, pillow=True)
    try:
        got = prepare._pillow(PILLOW_OPS["scale"], np.ascontiguousarray(images[:8]), np.uint8)
    finally:
        prepare.close()
    want = np.stack([np.asarray(PILLOW_OPS["scale"](Image.fromarray(a, mode="RGB"))) for a in images[:8]])
    assert got.dtype == np.uint8 and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("exact_divide", [True, False])
def test_uint8_to_float_gives_to_tensor_values(exact_divide, monkeypatch) -> None:
    assert predict._DIVIDE_IS_EXACT  # NumPy's float32 division agrees with torch's on this machine
    monkeypatch.setattr(predict, "_DIVIDE_IS_EXACT", exact_divide)  # either way: the same values
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    out = np.empty(values.shape, np.float32)
    predict._to_float(values, out)
    assert out.tobytes() == to_tensor(values).permute(0, 2, 3, 1).contiguous().numpy().tobytes()


@pytest.mark.parametrize("throttled", [False, True])
@pytest.mark.parametrize("op_name", ["jpeg", "scale"])
def test_identical_with_two_torch_threads_in_either_openmp_regime(model, images, op_name, throttled,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(predict._CONTENTION, "busy", throttled)
    torch.set_num_threads(2)
    try:
        _check_pillow_backend(model, images, op_name, batch_size=5, threads=2)
        reference = _reference(model, images, top_k=2, batch_size=4)["labels"]
        got = predict_under_operation(model, images, top_k=2, batch_size=4, device="cpu", tensor_op=_tensor_op,
                                      reference=reference)
        _assert_identical(got, _reference(model, images, top_k=2, batch_size=4, tensor_op=_tensor_op,
                                          reference=reference))
    finally:
        torch.set_num_threads(1)


def test_contention_decides_the_openmp_regime() -> None:
    c = predict._Contention()
    assert c.throttle()  # unknown: throttled, the safe side on a busy machine
    c.record(0.01, 1.0)
    assert not c.throttle()  # quiet: plain spin-waiting
    c.record(0.9, 1.0)
    assert c.throttle()
    c.record(None, 1.0)  # no measurement: keeps the last decision
    assert c.throttle()


def test_plain_spinning_comes_back_only_after_enough_quiet_forward_passes() -> None:
    c = predict._Contention()
    assert c.WINDOW_S == 0.2
    c.record(0.01, 1.0)
    assert not c.throttle()
    c.record(0.004, 0.0078125)  # one short busy call throttles at once
    assert c.throttle()
    for _ in range(3):  # 0.1875 s of quiet forward passes: not yet enough evidence
        c.record(0.0078125, 0.0625)
        assert c.throttle()
    c.record(0.0078125, 0.0625)
    assert not c.throttle()
    c.record(0.5, 1.0)
    for _ in range(3):  # quiet calls, then a busy one: the quiet ones no longer count
        c.record(0.0, 0.0625)
    c.record(0.03125, 0.0625)
    for _ in range(3):
        c.record(0.0, 0.0625)
    assert c.throttle()
    c.record(0.1875, 1.0)  # each call below the threshold, and on average over the window too
    assert not c.throttle()


def test_run_delay_is_measured() -> None:
    delay = predict._run_delay()
    assert delay is None or delay >= 0


def test_the_regime_follows_the_measured_contention(model, images, monkeypatch) -> None:
    contention = predict._Contention()
    monkeypatch.setattr(predict, "_CONTENTION", contention)
    delays = iter([0.0, 0.0, 5.0, 10.0])  # quiet first call, oversubscribed second
    monkeypatch.setattr(predict, "_run_delay", lambda: next(delays))
    monkeypatch.setattr(contention, "WINDOW_S", 0.0)  # one tiny call is evidence enough here
    torch.set_num_threads(2)
    try:
        predict_under_operation(model, images, top_k=2, batch_size=64, device="cpu")
        assert contention.busy is False
        predict_under_operation(model, images, top_k=2, batch_size=64, device="cpu")
        assert contention.busy is True
    finally:
        torch.set_num_threads(1)
    predict_under_operation(model, images, top_k=2, batch_size=64, device="cpu")  # one thread: not measured
    assert contention.busy is True


def _check_pillow_backend(model, images, op_name, batch_size, threads) -> None:
    op = PILLOW_OPS.get(op_name)
    original = _reference(model, images, top_k=3, batch_size=batch_size)
    reference = None if op is None else original["labels"]
    got = predict_under_operation(model, images, top_k=3, batch_size=batch_size, device="cpu", op=op,
                                  reference=reference, threads=threads)
    _assert_identical(got, _reference(model, images, top_k=3, batch_size=batch_size, op=op, reference=reference))


@pytest.mark.parametrize("batch_size", [3, 32])
def test_tensor_backend_matches_reference_loop(model, images, batch_size) -> None:
    reference = _reference(model, images, top_k=2, batch_size=batch_size)["labels"]
    got = predict_under_operation(model, images, top_k=2, batch_size=batch_size, device="cpu",
                                  tensor_op=_tensor_op, reference=reference)
    _assert_identical(got, _reference(model, images, top_k=2, batch_size=batch_size, tensor_op=_tensor_op,
                                      reference=reference))


def test_top_k_is_capped_at_the_number_of_classes(model, images) -> None:
    got = predict_under_operation(model, images, top_k=50, batch_size=5, device="cpu")
    assert got["labels"].shape == got["probs"].shape == (len(images), NUM_CLASSES)
    np.testing.assert_allclose(got["probs"].sum(axis=1), 1, rtol=1e-5)
    _assert_identical(got, _reference(model, images, top_k=50, batch_size=5))


def test_no_images(model, images) -> None:
    got = predict_under_operation(model, images[:0], top_k=3, batch_size=4, device="cpu", op=PILLOW_OPS["jpeg"])
    assert got["labels"].shape == got["probs"].shape == (0, 3)
    assert got["full"].shape == (0, NUM_CLASSES) and got["full"].dtype == np.float16


MANY_CLASSES = 12


@pytest.fixture(scope="module")
def wide_model() -> LoadedModel:
    """More classes than the benchmark's top-5, so that features can ask for k > 5."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(24, MANY_CLASSES)).eval()
    return LoadedModel(module=net, input_size=(12, 12), num_classes=MANY_CLASSES, prepare=lambda im: im)


@pytest.mark.parametrize("top_k", [5, 8, MANY_CLASSES, 40])
@pytest.mark.parametrize("op_name", [None, "jpeg"])
def test_full_probability_vectors(wide_model, images, top_k, op_name) -> None:
    op = PILLOW_OPS.get(op_name)
    original = predict_under_operation(wide_model, images, top_k=3, batch_size=4, device="cpu")
    reference = None if op is None else original["labels"]
    got = predict_under_operation(wide_model, images, top_k=top_k, batch_size=4, device="cpu", op=op,
                                  reference=reference)
    k = min(top_k, MANY_CLASSES)
    full = got["full"]
    assert got["labels"].shape == (len(images), k)
    assert got["probs"].shape == (len(images), 3 if reference is not None else k)
    assert full.shape == (len(images), MANY_CLASSES) and full.dtype == np.float16
    np.testing.assert_allclose(full.astype(np.float64).sum(axis=1), 1, atol=MANY_CLASSES * 2.0 ** -11)
    assert (full >= 0).all()
    # float16 rounding is monotonic: the float32 top-k order holds in `full`, up to ties
    ranked = np.take_along_axis(full, got["labels"].astype(np.int64), axis=1)
    assert (np.diff(ranked.astype(np.float32), axis=1) <= 0).all()
    assert (ranked[:, 0] == full.max(axis=1)).all()
    rest = full.copy()
    np.put_along_axis(rest, got["labels"].astype(np.int64), -1, axis=1)
    assert (rest.max(axis=1) <= ranked[:, -1]).all()  # no class outside the top-k beats it
    if reference is None:  # `probs` are the float32 values that `full` rounds
        assert (got["probs"].astype(np.float16) == ranked).all()
    else:
        np.testing.assert_array_equal(got["probs"].astype(np.float16),
                                      np.take_along_axis(full, reference.astype(np.int64), axis=1))
    _assert_identical(got, _reference(wide_model, images, top_k=top_k, batch_size=4, op=op, reference=reference))


def test_probs_and_labels_unchanged_by_full(wide_model, images) -> None:
    """``labels``/``probs`` as the engine computed them before ``full``: the float32 softmax's
    top-k (values and order) and the gathered reference probabilities."""
    got = predict_under_operation(wide_model, images, top_k=6, batch_size=4, device="cpu")
    with torch.no_grad():
        p = torch.softmax(wide_model.module(to_tensor(np.asarray(images[:4]))).float(), dim=1)
    top = p.topk(6, dim=1)
    assert got["labels"][:4].tobytes() == top.indices.numpy().astype(np.int32).tobytes()
    assert got["probs"][:4].tobytes() == top.values.numpy().tobytes()


def test_a_model_with_the_wrong_number_of_outputs_is_a_plugin_error(model, images) -> None:
    wrong = LoadedModel(module=model.module, input_size=(12, 12), num_classes=NUM_CLASSES + 1,
                        prepare=lambda im: im)
    with pytest.raises(PluginError, match="num_classes=8"):
        predict_under_operation(wrong, images, top_k=3, batch_size=4, device="cpu")


def test_errors_in_an_operation_propagate(model, images) -> None:
    def broken(image):
        raise RuntimeError("broken op")

    with pytest.raises(RuntimeError, match="broken op"):
        predict_under_operation(model, images, top_k=3, batch_size=4, device="cpu", op=broken)


def test_images_of_different_sizes_in_one_batch_are_an_error(model, images) -> None:
    counter = iter(range(1000))

    def uneven(image):
        return image.resize((8 + next(counter) % 2, 8))

    with pytest.raises(ValueError, match="different sizes"):
        predict_under_operation(model, images, top_k=3, batch_size=4, device="cpu", op=uneven, threads=1)


def test_uneven_sizes_are_an_error_in_pillow_threads_too(model, images, pillow_threads_on_small_images) -> None:
    calls = iter(range(1000))

    def uneven(image):  # one image is 8x8, the others 8x1: they would broadcast into an 8x8 batch
        return image.resize((8, 8 if next(calls) == 0 else 1))

    with pytest.raises(ValueError, match="different sizes"):
        predict_under_operation(model, images, top_k=3, batch_size=11, device="cpu", op=uneven, threads=3)


class RecordingArray:
    """An image array that records every read and refuses to be read whole."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self.shape, self.dtype = array.shape, array.dtype
        self.requests: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step in (None, 1), f"unexpected read {key!r}"
        start, stop, _ = key.indices(len(self._array))
        self.requests.append((start, stop))
        return self._array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image array was read at once")


@pytest.mark.parametrize("kind", ["original", "pillow", "tensor"])
def test_reads_the_input_chunk_by_chunk(model, images, kind) -> None:
    batch_size = 4
    recorder = RecordingArray(images)
    kwargs = {"pillow": {"op": PILLOW_OPS["blur"]}, "tensor": {"tensor_op": _tensor_op}}.get(kind, {})
    got = predict_under_operation(model, recorder, top_k=3, batch_size=batch_size, device="cpu", **kwargs)
    assert recorder.requests, "nothing was read"
    assert all(stop - start <= batch_size for start, stop in recorder.requests), recorder.requests
    rows = sorted(i for start, stop in recorder.requests for i in range(start, stop))
    assert rows == list(range(len(images))), "every row read exactly once"
    _assert_identical(got, _reference(model, images, top_k=3, batch_size=batch_size, **kwargs))


OPERATIONS = [(None, None), (PILLOW_OPS["jpeg"], None), (PILLOW_OPS["scale"], None), (None, _tensor_op),
              (PILLOW_OPS["gray"], None)]


@pytest.mark.parametrize("torch_threads, throttled", [(1, None), (2, False), (2, True)])
@pytest.mark.parametrize("batch_size, threads", [(4, 2), (64, 1), (11, 3)])
def test_many_operations_in_one_call_match_one_call_each(model, images, batch_size, threads, torch_threads,
                                                          throttled, monkeypatch,
                                                          pillow_threads_on_small_images) -> None:
    monkeypatch.setattr(predict._CONTENTION, "busy", throttled)
    reference = _reference(model, images, top_k=3, batch_size=batch_size)["labels"]
    torch.set_num_threads(torch_threads)
    try:
        got = list(predict_under_operations(model, images, OPERATIONS, top_k=3, batch_size=batch_size,
                                            device="cpu", reference=reference, threads=threads))
    finally:
        torch.set_num_threads(1)
    assert len(got) == len(OPERATIONS)
    for (op, tensor_op), result in zip(OPERATIONS, got):
        _assert_identical(result, _reference(model, images, top_k=3, batch_size=batch_size, op=op,
                                             tensor_op=tensor_op, reference=reference))


def test_many_operations_yield_each_result_when_it_is_ready(model, images) -> None:
    def broken(image):
        raise RuntimeError("broken op")

    results = predict_under_operations(model, images, [(None, None), (broken, None)], top_k=3, batch_size=4,
                                       device="cpu")
    _assert_identical(next(results), _reference(model, images, top_k=3, batch_size=4))
    assert torch.is_grad_enabled()  # no_grad holds inside the engine only, not between results
    with pytest.raises(RuntimeError, match="broken op"):
        next(results)


def test_many_operations_read_each_chunk_once_per_operation(model, images) -> None:
    recorder = RecordingArray(images)
    list(predict_under_operations(model, recorder, OPERATIONS[:3], top_k=3, batch_size=4, device="cpu"))
    assert all(stop - start <= 4 for start, stop in recorder.requests), recorder.requests
    rows = sorted(i for start, stop in recorder.requests for i in range(start, stop))
    assert rows == sorted(list(range(len(images))) * 3)


def test_many_operations_on_no_images(model, images) -> None:
    got = list(predict_under_operations(model, images[:0], OPERATIONS, top_k=3, batch_size=4, device="cpu"))
    assert len(got) == len(OPERATIONS)
    assert all(r["labels"].shape == (0, 3) and r["full"].shape == (0, NUM_CLASSES) for r in got)


def test_topk_misclassified() -> None:
    labels = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int32)
    assert topk_misclassified(labels, np.array([2, 0, 5])) == 1
    assert topk_misclassified(labels[:0], np.array([], dtype=np.int64)) == 0
