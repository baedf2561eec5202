import numpy as np

from advbench_plugins.correctors.votes import paper_vote, rank_weighted, top1_majority

# one image, n = 3 operations, k = 3
LISTS = np.array([[[4, 7, 1],
                   [7, 4, 2],
                   [7, 1, 9]]])


def test_paper_vote_ranks_labels_by_frequency_over_all_lists():
    # counts: 7 -> 3, 4 -> 2, 1 -> 2, 2 -> 1, 9 -> 1; tie 4 vs 1 broken by best rank (4 reached rank 0)
    assert paper_vote(LISTS, 3).tolist() == [[7, 4, 1]]


def test_top1_majority_counts_only_first_positions():
    assert top1_majority(LISTS, 2).tolist() == [[7, 4]]
    # only two labels ever were top-1: the rest of the list is padded with -1
    assert top1_majority(LISTS, 3).tolist() == [[7, 4, -1]]


def test_rank_weighted_prefers_agreement_at_the_top():
    # 4: 1 + 0.5 = 1.5; 1: 0.25 + 0.5 = 0.75; 7: 0.5 + 1 + 1 = 2.5
    assert rank_weighted(LISTS, 3).tolist() == [[7, 4, 1]]
    lists = np.array([[[1, 2], [2, 1], [3, 1]]])
    assert rank_weighted(lists, 1, decay=0.5).tolist() == [[1]]  # 1: 1+0.5+0.5 beats 2: 0.5+1


def test_ties_are_deterministic():
    lists = np.array([[[5, 3], [3, 5]]])  # identical counts and best ranks: first appearance wins
    assert paper_vote(lists, 2).tolist() == [[5, 3]]
    assert paper_vote(lists[:, ::-1], 2).tolist() == [[3, 5]]
    assert (paper_vote(lists, 2) == paper_vote(lists.copy(), 2)).all()
