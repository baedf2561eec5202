from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.engine.imagesets import perturbation_norms, run_attack, select_clean, split_sources
from advbench.errors import DataError
from advbench.specs import AttackSpec, BuildContext, Sample
from advbench.testing import digits, tiny_model


def test_split_never_puts_a_source_in_two_splits_and_follows_shares():
    rng = np.random.default_rng(1)
    n = 400
    successes = {a: rng.random(n) < p for a, p in (("fgsm", 0.6), ("pgd", 0.3), ("cw", 0.8))}
    split = split_sources(n, successes, (0.7, 0.15, 0.15), seed=0)
    assert split.shape == (n,) and set(split.tolist()) == {0, 1, 2}  # one split per source
    shares = np.bincount(split, minlength=3) / n
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.03)
    for ok in successes.values():  # stratified: every attack gets the shares too
        assert np.allclose(np.bincount(split[ok], minlength=3) / ok.sum(), [0.7, 0.15, 0.15], atol=0.05)
    assert (split_sources(n, successes, (0.7, 0.15, 0.15), seed=0) == split).all()


def test_norms():
    clean = np.zeros((1, 2, 2, 3), np.uint8)
    adv = clean.copy()
    adv[0, 0, 0, 0] = 255
    adv[0, 1, 1, 2] = 51
    norms = perturbation_norms(clean, adv)
    assert norms["l0"][0] == 2 and np.isclose(norms["l1"][0], 1.2) and np.isclose(norms["linf"][0], 1.0)
    assert np.isclose(norms["l2"][0], np.sqrt(1 + 0.04))


class _Source:
    class_names = [str(i) for i in range(10)]
    skipped = 0

    def __iter__(self):
        from PIL import Image
        images, labels = digits()
        for i in range(1, 81, 2):
            yield Sample(f"s{i}", Image.fromarray(images[i]), int(labels[i]))


def test_clean_selection_keeps_only_topk_correct_images_seeded():
    model = tiny_model()
    arrays, metrics = select_clean(_Source(), model, top_k=1, n=10, seed=3, device="cpu")
    assert metrics["seen"] == 40 and metrics["selected"] == 10
    with torch.no_grad():
        pred = model.module(torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert (pred.numpy() == arrays["labels"]).all()
    again, _ = select_clean(_Source(), model, top_k=1, n=10, seed=3, device="cpu")
    assert (again["ids"] == arrays["ids"]).all()


def _clean(n=8):
    model = tiny_model()
    arrays, _ = select_clean(_Source(), model, top_k=1, n=n, seed=0, device="cpu")
    return model, arrays


def _attack(run):
    return AttackSpec(name="t", summary="t", run=run)


def test_jpeg_reverification_drops_an_example_whose_perturbation_does_not_survive(tmp_path):
    model, clean = _clean()
    images = torch.from_numpy(clean["images"]).permute(0, 3, 1, 2).float() / 255

    # the adversarial candidate of row 0 is adversarial only through one tiny, high-frequency
    # pattern that a JPEG round trip destroys; our 'model wrapper' checks for that exact pattern
    pattern = torch.zeros_like(images[0])
    pattern[:, ::2, ::2] = 1 / 255

    class Fragile(torch.nn.Module):
        def forward(self, x):
            logits = model.module(x)
            hit = ((x - images[: len(x)]) - pattern).abs().flatten(1).amax(1) < 0.5 / 255
            return torch.where(hit.view(-1, 1), -logits, logits)  # flips the prediction

    fragile = type(model)(module=Fragile(), input_size=model.input_size, num_classes=10, prepare=model.prepare)
    spec = _attack(lambda m, x, c, p, ctx: (x + pattern).clamp(0, 1))
    out = tmp_path / "a"
    out.mkdir()
    arrays, metrics = run_attack(spec, spec.params(), fragile, clean, out_dir=out, top_k=1, shift=3, threshold=0.99,
                                 fmt="jpeg", quality=75, batch_size=8, seed=0, ctx=BuildContext(tmp_path))
    assert metrics["success_before_save"] >= 1 and metrics["success"] == 0 and len(arrays["images"]) == 0
    assert not list((out / "images").glob("*.jpg"))  # dropped examples leave no file


def test_png_keeps_what_jpeg_loses(tmp_path):
    model, clean = _clean()
    spec = _attack(lambda m, x, c, p, ctx: 1 - x)  # inverting digits fools the tiny CNN
    out = tmp_path / "a"
    out.mkdir()
    arrays, metrics = run_attack(spec, spec.params(), model, clean, out_dir=out, top_k=1, shift=3, threshold=0.99,
                                 fmt="png", quality=100, batch_size=4, seed=0, ctx=BuildContext(tmp_path))
    assert metrics["success"] == metrics["success_before_save"] > 0
    assert len(list((out / "images").glob("*.png"))) == metrics["success"] == len(arrays["source"])


def test_manifest_records_the_attack_budget_before_the_jpeg_round_trip(tmp_path):
    model, clean = _clean()
    spec = _attack(lambda m, x, c, p, ctx: 1 - x)
    out = tmp_path / "a"
    out.mkdir()
    _, metrics = run_attack(spec, spec.params(), model, clean, out_dir=out, top_k=1, shift=3, threshold=0.99,
                            fmt="jpeg", quality=100, batch_size=4, seed=0, ctx=BuildContext(tmp_path))
    kept = [m for m in json.loads((out / "manifest.json").read_text()) if m["success_after_save"]]
    assert kept
    for m in kept:
        row = clean["images"][m["index"]].astype(np.float64) / 255
        exact = np.abs(1 - 2 * row)  # |(1 - x) - x|: the inversion spends exactly this
        assert np.isclose(m["pre_save_linf"], exact.max()) and np.isclose(m["pre_save_l1"], exact.sum(), rtol=1e-4)
        assert m["pre_save_l0"] == (exact > 0).sum()
    # JPEG at q100 still rounds: the saved images differ from what the attack produced
    assert any(not np.isclose(m["l1"], m["pre_save_l1"]) for m in kept)
    assert np.isclose(metrics["mean_pre_save_linf"], np.mean([m["pre_save_linf"] for m in kept]))


def test_a_shift_that_is_a_multiple_of_the_classes_is_refused(tmp_path):
    model, clean = _clean()
    spec = AttackSpec(name="t", summary="t", targeted=True, run=lambda m, x, c, p, ctx: x)
    with pytest.raises(DataError, match="multiple of the 10 classes"):
        run_attack(spec, spec.params(), model, clean, out_dir=Path(tmp_path), top_k=1, shift=100, threshold=0.99,
                   fmt="jpeg", quality=100, batch_size=4, seed=0, ctx=BuildContext(tmp_path))
