import torch

from advbench.criteria import PaperCriterion, target_labels, targeted_success, untargeted_success


def test_target_is_the_shifted_top1_modulo_classes():
    assert target_labels(torch.tensor([0, 950, 999]), 100, 1000).tolist() == [100, 50, 99]


def test_targeted_success_needs_the_probability_threshold():
    logits = torch.tensor([[0.0, 10.0, 0.0], [0.0, 2.0, 0.0]])
    assert targeted_success(logits, torch.tensor([1, 1]), 0.99).tolist() == [True, False]


def test_untargeted_success_means_the_label_left_the_top_k():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    labels = torch.tensor([0, 0])
    assert untargeted_success(logits, labels, 1).tolist() == [False, True]
    assert untargeted_success(logits, labels, 3).tolist() == [False, True]
    assert untargeted_success(logits, labels, 4).tolist() == [False, False]


def test_criterion_subset_keeps_rows_aligned():
    c = PaperCriterion(True, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), k=1, threshold=0.5)
    sub = c.subset(torch.tensor([2]))
    assert sub.targets.tolist() == [0] and sub(torch.tensor([[9.0, 0.0, 0.0]])).tolist() == [True]
