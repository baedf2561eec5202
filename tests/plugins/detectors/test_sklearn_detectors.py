import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from advbench.testing import check_detector
from advbench_plugins.detectors.sklearn_detectors import scatter_defects


@pytest.mark.parametrize("name", ["svm", "random-forest", "lda", "mlp"])
def test_detector_contract(registry, name):
    assert check_detector(registry.get("detector", name)) >= 0.9


def test_random_forest_is_configured_as_the_paper(registry):
    spec = registry.get("detector", "random-forest")
    forest = spec.build(spec.params(), 0).estimator
    assert forest.n_estimators == 100 and forest.max_depth == 2


# --- LDA on degenerate features (a one-operation group gives count features in {0, 1}) ------

Y = np.repeat([0, 1], [14, 6])
NOISE = np.random.default_rng(0).normal(size=(20, 2))


def _lda(registry, solver="svd"):
    spec = registry.get("detector", "lda")
    return spec.build(spec.params(solver=solver), 0)


def test_lda_on_constant_features_scores_every_row_alike(registry):
    """Every image keeps its labels under the one operation: scikit-learn's SVD solver raised
    IndexError; the detector now predicts the majority class with one score for all rows."""
    x = np.ones((20, 2))
    with pytest.raises(IndexError):  # the crash this guards against (if scikit-learn fixes it, drop this)
        make_pipeline(StandardScaler(), LinearDiscriminantAnalysis()).fit(x, Y)
    for solver in ("svd", "lsqr", "eigen"):
        lda = _lda(registry, solver).fit(x, Y)
        scores = lda.scores(x)
        assert lda.regularised and np.ptp(scores) == 0 and (lda.predict(x) == 0).all()
        assert scores[0] == pytest.approx(np.log(6 / 14))  # LDA with no direction: the log prior ratio


@pytest.mark.parametrize("noise", [False, True])
def test_lda_uses_a_direction_that_separates_the_classes_without_error(registry, noise):
    """Column 0 is constant within each class: the SVD solver crashed (alone) or discarded it
    (beside a noisy column) though it separates the classes perfectly."""
    x = np.c_[Y == 1, np.ones(20) if not noise else NOISE[:, 0]].astype(float)
    lda = _lda(registry).fit(x, Y)
    assert lda.regularised
    assert (lda.predict(x) == Y).all() and lda.scores(x)[Y == 1].min() > lda.scores(x)[Y == 0].max()


def test_a_regularised_lda_saves_and_loads_with_scikit_learns_types_only(registry, tmp_path):
    """Score and adaptive cells reload the detect cell's detector (skops, which refuses types
    other than scikit-learn's and numpy's): the ridge estimator is not among them."""
    x = np.c_[Y == 1, NOISE[:, 0]].astype(float)
    lda = _lda(registry).fit(x, Y)
    assert lda.regularised
    lda.save(tmp_path)
    again = _lda(registry).load(tmp_path)
    np.testing.assert_array_equal(again.scores(x), lda.scores(x))


@pytest.mark.parametrize("solver", ["svd", "lsqr", "eigen"])
def test_lda_on_regular_features_is_scikit_learns(registry, solver):
    """Ordinary data, and a duplicated or constant column (singular, not degenerate): scikit-
    learn's own result (the eigen solver, which needs a regular scatter, gets the ridge)."""
    x = NOISE + Y[:, None]
    for data in (x, np.c_[x, x[:, :1]], np.c_[x, np.full(20, 3.0)]):
        singular = data.shape[1] > 2
        assert scatter_defects(StandardScaler().fit_transform(data), Y) == (singular, False)
        lda = _lda(registry, solver).fit(data, Y)
        assert lda.regularised == (singular and solver == "eigen")
        if not lda.regularised:
            ref = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver=solver)).fit(data, Y)
            np.testing.assert_allclose(lda.scores(data), ref.decision_function(data))
        else:  # the ridge barely moves the discriminant where the scatter is regular
            ref = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="svd")).fit(data, Y)
            np.testing.assert_allclose(lda.scores(data), ref.decision_function(data), rtol=1e-4, atol=1e-4)
