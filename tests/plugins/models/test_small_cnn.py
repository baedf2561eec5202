"""The embedded default model's weight cache: damaged weights are retrained, an unwritable
cache is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advbench.errors import DataError
from advbench.specs import BuildContext
from advbench_plugins.models import small_cnn as small_cnn_module
from advbench_plugins.models.loading import Normalized
from advbench_plugins.models.small_cnn import SmallCNNParams, build, small_cnn

PARAMS = SmallCNNParams(size=8, width=4, epochs=1)


def _same_weights(a, b) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fake_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Training replaced by a seeded initialisation (the cache logic is under test, not the
    training); the seeds it was called with."""
    trained: list[int] = []

    def fake_training(params, seed):
        torch.manual_seed(seed)
        trained.append(seed)
        return Normalized(small_cnn(10, params.width), (0.5,) * 3, (0.5,) * 3)

    monkeypatch.setattr(small_cnn_module, "train_digits_cnn", fake_training)
    return trained


def test_damaged_cached_weights_are_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = _fake_training(monkeypatch)
    ctx = BuildContext(cache_dir=tmp_path, device="cpu", seed=0)
    first = build(PARAMS, ctx)
    assert _same_weights(first, build(PARAMS, ctx)) and len(trained) == 1  # cached
    (path,) = tmp_path.glob("digits-cnn-*.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a disk that lost the file's end
    with pytest.warns(UserWarning, match="rebuilding digits-cnn's trained weights: .* is damaged .* has \\d+ bytes"):
        again = build(PARAMS, ctx)
    assert _same_weights(first, again) and len(trained) == 2
    assert _same_weights(first, build(PARAMS, ctx)) and len(trained) == 2  # the repaired file serves the next


def test_weights_that_still_load_but_changed_are_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One flipped bit in a tensor leaves torch.load happy, and was used silently: the checksum
    catches it, the weights are trained again, and the warning names the file."""
    trained = _fake_training(monkeypatch)
    ctx = BuildContext(cache_dir=tmp_path, device="cpu", seed=0)
    first = build(PARAMS, ctx)
    (path,) = tmp_path.glob("digits-cnn-*.pt")
    state = torch.load(path, weights_only=True)
    name = next(iter(state))
    state[name] = state[name] + 1.0  # same size, still a valid checkpoint
    torch.save(state, path)
    with pytest.warns(UserWarning, match=f"rebuilding digits-cnn's trained weights: {path} is damaged .*checksum"):
        again = build(PARAMS, ctx)
    assert len(trained) == 2 and _same_weights(first, again)


def test_an_unwritable_weight_cache_is_one_line(tmp_path: Path) -> None:
    """A cache folder that cannot be made (here: a file stands in its way, which stops root
    too; a read-only cache fails the same way) is the user's to fix, in one line."""
    (tmp_path / "plugins").write_text("not a folder")
    cache = tmp_path / "plugins" / "digits-cnn"
    with pytest.raises(DataError) as err:
        build(PARAMS, BuildContext(cache_dir=cache, device="cpu", seed=0))
    msg = str(err.value)
    assert "\n" not in msg and str(cache) in msg and "--cache-dir" in msg and err.value.__cause__ is None
