from __future__ import annotations

import numpy as np
import pytest

from advbench.engine.detect import DEV, EVAL, TRAIN, LabelledSet, select_on_dev
from advbench.errors import DataError


def _data(split: list[int]) -> LabelledSet:
    n = len(split)
    y = np.arange(n) % 2
    return LabelledSet(original=np.zeros((n, 1)), transformed=np.zeros((n, 0, 1)), y=y, split=np.asarray(split),
                       origin=np.where(y == 1, "a", "clean"), truth=np.zeros(n), images=np.zeros((n, 0)))


class _Fixed:
    """Predicts 'adversarial' for rows whose feature exceeds ``cut``."""

    def __init__(self, cut: float):
        self.cut, self.fitted = cut, False

    def fit(self, features, labels):
        self.fitted = True
        return self

    def predict(self, features):
        return (features[:, 0] > self.cut).astype(int)

    def scores(self, features):
        return features[:, 0]


def test_select_on_dev_keeps_the_best_dev_accuracy_and_the_first_of_equals():
    data = _data([TRAIN] * 4 + [DEV] * 4 + [EVAL] * 4)
    features = data.y[:, None].astype(float)  # 0 for normal, 1 for adversarial rows
    cuts = [2.0, 0.5, -1.0, 0.5]  # all normal (dev acc 0.5), perfect, all adversarial (0.5), perfect again
    index, chosen, accuracies = select_on_dev([lambda c=c: _Fixed(c) for c in cuts], features, data, with_dev=lambda d: False)
    assert accuracies == [0.5, 1.0, 0.5, 1.0] and index == 1 and chosen.cut == 0.5 and chosen.fitted


def test_select_on_dev_needs_a_dev_split():
    data = _data([TRAIN] * 4 + [EVAL] * 4)
    with pytest.raises(DataError, match="dev split is empty"):
        select_on_dev([lambda: _Fixed(0.5)], data.y[:, None].astype(float), data, with_dev=lambda d: False)
