"""Local intrinsic dimensionality (Ma et al. 2018) on the tiny world."""

import numpy as np
import torch

from advbench.imaging import to_tensor
from advbench.specs import FitInfo
from advbench.testing import check_model_detector, tiny_adversarial_world
from advbench_plugins.detectors.baselines.common import nearest_rows
from advbench_plugins.detectors.baselines.lid import LID, LIDParams, lid_mle, pairwise_squared, reference_indices
from advbench_plugins.detectors.baselines_plugins import DETECTORS

SPEC = next(s for s in DETECTORS if s.name == "lid")


def numpy_lid(distances: np.ndarray, k: int) -> float:
    r = np.sort(distances)[:k]
    return -1.0 / np.mean(np.log(r / r[-1]))


def test_meets_the_model_detector_contract_and_separates_adversarial_digits():
    # 0.76-0.79 over tiny models trained with other seeds and thread counts
    assert check_model_detector(SPEC, min_auroc=0.7) >= 0.7


def test_lid_mle_matches_the_formula_and_skips_unusable_neighbours():
    rng = np.random.default_rng(0)
    r = rng.uniform(0.5, 3.0, size=(4, 12))
    squared = torch.from_numpy(r ** 2)
    got = lid_mle(squared, 5, torch.ones_like(squared, dtype=torch.bool)).numpy()
    assert np.allclose(got, [numpy_lid(row, 5) for row in r])
    usable = torch.ones_like(squared, dtype=torch.bool)
    usable[:, r[0].argmin()] = False
    skipped = lid_mle(squared, 5, usable).numpy()
    assert np.isclose(skipped[0], numpy_lid(np.delete(r[0], r[0].argmin()), 5))


def test_reference_batches_are_seeded_disjoint_and_capped_by_the_normal_images():
    a = reference_indices(250, 100, 3, seed=0)
    assert [len(b) for b in a] == [100, 100]  # only two full batches of 100 in 250 images
    assert len(np.intersect1d(a[0], a[1])) == 0
    assert all(np.array_equal(x, y) for x, y in zip(a, reference_indices(250, 100, 3, seed=0)))
    assert not np.array_equal(a[0], reference_indices(250, 100, 3, seed=1)[0])
    assert [len(b) for b in reference_indices(40, 100, 1, seed=0)] == [40]


def _paired_world(n: int = 60):
    """Normal images 0..n-1 and their adversarials, with the sources the core would hand fit."""
    normal, adversarial = tiny_adversarial_world()
    images = np.concatenate([normal[:n], adversarial[:n]])
    return images, np.repeat([0, 1], n), np.tile(np.arange(n), 2)


def _fitted(make_ctx):
    images, labels, sources = _paired_world()
    detector = LID(LIDParams(k=10, minibatch=30, noisy=False), make_ctx())
    detector.fit(images, labels, info=FitInfo(sources=sources))
    return detector, images, labels, sources


def test_fit_excludes_exactly_the_source_of_each_training_image(make_ctx):
    detector, images, labels, sources = _fitted(make_ctx)
    refs = detector.reference_sources  # the 30 normal images drawn as the reference, by source id
    assert len(refs) == 30 and set(refs.tolist()) <= set(range(60))
    layer = "net.3"
    x = to_tensor(images)
    column = list(detector._activations(x[:1])).index(layer)
    in_ref = np.isin(sources, refs)
    rows = np.r_[np.flatnonzero(in_ref & (labels == 1))[:6],    # adversarial, its source in the reference
                 np.flatnonzero(in_ref & (labels == 0))[:3],    # reference images themselves
                 np.flatnonzero(~in_ref & (labels == 1))[:3]]   # adversarial, its source not in the reference
    with torch.no_grad():
        act = detector._activations(x[rows])[layer].double()
        got = detector._features(x[rows], torch.from_numpy(sources[rows]))[:, column].numpy()
    distances = np.sqrt(((detector.references[layer].double()[None] - act[:, None]) ** 2).sum(-1).numpy())
    for i, row in enumerate(rows):
        kept = refs != sources[row]  # every reference but the one made from the same source
        assert kept.sum() == len(refs) - int(in_ref[row])  # exactly one removed, or none
        assert np.isclose(got[i], numpy_lid(distances[i][kept], 10), rtol=1e-6)


def test_the_source_among_the_neighbours_pulls_an_adversarial_lid_down(make_ctx):
    detector, images, labels, sources = _fitted(make_ctx)
    adversarial = np.flatnonzero(np.isin(sources, detector.reference_sources) & (labels == 1))
    x = to_tensor(images[adversarial])
    with torch.no_grad():
        free = detector._features(x)  # a new image: every reference usable
        kept_out = detector._features(x, torch.from_numpy(sources[adversarial]))
    assert (kept_out[:, 0] > free[:, 0]).float().mean() >= 0.75


def test_without_the_cores_sources_the_nearest_normal_image_stands_in():
    normal, adversarial = tiny_adversarial_world()
    assert np.array_equal(nearest_rows(adversarial[:20], normal[:40]), np.arange(20))


def test_pairwise_squared_distances_and_self_tolerance():
    a = torch.rand(3, 50, dtype=torch.float64) * 10
    squared, tolerance = pairwise_squared(a, a)
    assert torch.allclose(squared, torch.cdist(a, a) ** 2, atol=1e-9)
    assert (squared.diagonal() <= tolerance.diagonal()).all()
    off = ~torch.eye(3, dtype=torch.bool)
    assert (squared[off] > tolerance[off]).all()


def test_more_reference_batches_average_the_estimates(splits, make_ctx):
    normal, adversarial = tiny_adversarial_world()
    images = np.concatenate([normal, adversarial])
    labels = np.repeat([0, 1], len(normal))
    detector = LID(LIDParams(minibatch=50, reference_batches=3), make_ctx()).fit(images, labels)
    assert [len(b) for b in detector.batches] == [50, 50, 50]
    assert len(detector.reference_images) == 150


def test_a_reference_batch_smaller_than_k_still_gives_finite_scores(make_ctx):
    normal, adversarial = tiny_adversarial_world()
    images = np.concatenate([normal[:6], normal[:1], adversarial[:6]])  # a duplicate: two zero distances
    labels = np.array([0] * 7 + [1] * 6)
    detector = LID(LIDParams(k=20, minibatch=7), make_ctx()).fit(images, labels)  # one batch: all 7
    assert np.isfinite(detector.scores(images)).all()
