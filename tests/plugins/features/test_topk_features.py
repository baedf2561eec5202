import numpy as np

from advbench_plugins.features.topk_features import counting_feature, differences_feature

# one image, k = 3, n = 4 operations
ORIGINAL = np.array([[7, 2, 5]])
TRANSFORMED = np.array([[[7, 2, 5],    # unchanged
                         [7, 5, 2],    # positions 2 and 3 swapped
                         [1, 2, 5],    # top-1 replaced
                         [2, 7, 5]]])  # a label moved position: counts as changed (position matters)


def test_counting_feature_counts_unchanged_labels_per_position():
    assert counting_feature(ORIGINAL, TRANSFORMED).tolist() == [[2.0, 2.0, 3.0]]


def test_differences_feature_is_the_n_by_k_binary_matrix_flattened():
    expected = [[0, 0, 0,
                 0, 1, 1,
                 1, 0, 0,
                 1, 1, 0]]
    assert differences_feature(ORIGINAL, TRANSFORMED).tolist() == expected


def test_features_for_k1_and_many_images():
    original = np.array([[3], [4]])
    transformed = np.array([[[3], [3], [9]], [[1], [1], [1]]])
    assert counting_feature(original, transformed).tolist() == [[2.0], [0.0]]
    assert differences_feature(original, transformed).shape == (2, 3)


def test_counting_is_the_column_sum_of_unchanged_differences():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 5, (20, 5))
    transformed = rng.integers(0, 5, (20, 38, 5))
    diff = differences_feature(original, transformed).reshape(20, 38, 5)
    assert (counting_feature(original, transformed) == (1 - diff).sum(1)).all()
