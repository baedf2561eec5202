import pytest

from advbench.specs import DetectorContext
from advbench.testing import tiny_detection_splits, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every detector test module runs on one thread (tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def splits():
    """Tiny-world digits and their BIM adversarials (foolbox), split by source: train/dev/eval."""
    return tiny_detection_splits()


@pytest.fixture()
def make_ctx(tmp_path):
    """A DetectorContext around the tiny model (or ``model``), with ``seed``."""
    def make(seed: int = 0, model=None) -> DetectorContext:
        return DetectorContext(cache_dir=tmp_path / "cache", device="cpu", seed=seed, model=model or tiny_model())
    return make
