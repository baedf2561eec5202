import pytest

from advbench.testing import check_detector


@pytest.mark.parametrize("name", ["svm", "random-forest", "lda", "mlp"])
def test_detector_contract(registry, name):
    assert check_detector(registry.get("detector", name)) >= 0.9


def test_random_forest_is_configured_as_the_paper(registry):
    spec = registry.get("detector", "random-forest")
    forest = spec.build(spec.params(), 0).estimator
    assert forest.n_estimators == 100 and forest.max_depth == 2
