"""Local intrinsic dimensionality (Ma et al. 2018) on the tiny world."""

import numpy as np
import torch

from advbench.imaging import to_tensor
from advbench.testing import check_model_detector, tiny_adversarial_world
from advbench_plugins.detectors.baselines.activations import reduce
from advbench_plugins.detectors.baselines.lid import (LID, LIDParams, lid_mle, nearest_rows, pairwise_squared,
                                                      reference_indices)
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


def test_a_reference_image_is_never_its_own_neighbour(splits, make_ctx):
    train = splits["train"]
    detector = LID(LIDParams(k=10), make_ctx()).fit(train.images, train.labels)
    refs = detector.reference_images
    layer = "net.3"
    x = to_tensor(refs[:5])
    with torch.no_grad():
        features = detector._features(x)
        act = reduce(detector.probe(x)[layer], "flatten").double()
    column = list(detector.probe(x)).index(layer)
    ref = detector.references[layer].double()
    for i in range(5):
        distances = np.sqrt(((ref - act[i]) ** 2).sum(1).numpy())
        others = np.delete(distances, i)  # reference i is image i itself
        assert np.isclose(features[i, column].item(), numpy_lid(others, 10), rtol=1e-5)


def test_an_adversarial_training_image_does_not_have_its_source_as_a_neighbour():
    normal, adversarial = tiny_adversarial_world()
    assert np.array_equal(nearest_rows(adversarial[:20], normal[:40]), np.arange(20))


def test_fit_excludes_the_likely_source_of_each_adversarial_training_image(splits, make_ctx):
    train = splits["train"]
    detector = LID(LIDParams(k=10), make_ctx()).fit(train.images, train.labels)
    adversarial = train.images[train.labels == 1][:8]
    source = nearest_rows(adversarial, detector.reference_images)
    x = to_tensor(adversarial)
    with torch.no_grad():
        free = detector._features(x)
        kept_out = detector._features(x, torch.from_numpy(source))
    # with its source among the neighbours the first-layer LID is pulled down
    assert (kept_out[:, 0] > free[:, 0]).float().mean() >= 0.75


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
