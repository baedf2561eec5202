"""The worst-case bookkeeping of a robust evaluation: never better for the defender than any
member's verdict, monotone over budgets, and candidates projected inside the budget ball."""

from __future__ import annotations

import numpy as np
import pytest

from advbench.engine.worst_case import NONE, WorstCase, into_ball, keep_worst, perturbation


def test_the_worst_case_is_never_better_for_the_defender_than_any_member():
    rng = np.random.default_rng(0)
    n, members, budgets = 40, 3, 4
    clean = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    state = WorstCase.fresh(clean, members)
    broken_by = np.zeros((budgets, members, n), dtype=bool)
    fooled_by = np.zeros((budgets, members, n), dtype=bool)
    previous_broken = np.zeros(n, dtype=bool)
    for b in range(budgets):
        for m in range(members):
            rows = state.pending()  # members only see what still stands
            fooled = rng.random(len(rows)) < 0.4
            broken = fooled & (rng.random(len(rows)) < 0.3)
            candidates = rng.integers(0, 256, (len(rows), 4, 4, 3), dtype=np.uint8)
            new = keep_worst(state, rows, candidates, candidates, fooled, fooled & ~broken, broken, m, b)
            broken_by[b, m, rows], fooled_by[b, m, rows] = broken, fooled
            assert set(new) == set(rows[broken])
            # the kept image of a row a member broke is that member's
            assert (state.member[rows[broken]] == m).all()
            assert np.array_equal(state.submitted[rows[broken]], candidates[broken])
        # every member's break, at this budget or any below, is kept: the union, and only it
        assert np.array_equal(state.broken, broken_by[: b + 1].any((0, 1)))
        assert (state.broken >= previous_broken).all()  # monotone in the budget
        previous_broken = state.broken.copy()
        assert (state.fooled >= state.broken).all() and (state.fooled >= fooled_by[: b + 1].any((0, 1))).all()
        assert (state.broken_at[state.broken] <= b).all() and (state.broken_at[~state.broken] == NONE).all()
    assert np.array_equal(WorstCase.from_arrays(state.arrays()).broken, state.broken)


def test_a_broken_image_is_never_replaced_and_each_member_keeps_its_warm_start():
    clean = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    state = WorstCase.fresh(clean, 2)
    first, second = np.full_like(clean, 1), np.full_like(clean, 2)
    yes, no = np.array([True, False]), np.array([False, False])
    keep_worst(state, np.arange(2), first, first, yes, no, yes, 0, 0)
    keep_worst(state, np.arange(2), second, second, np.array([True, True]), np.array([False, True]), np.array([True, False]), 1, 0)
    assert (state.submitted[0] == 1).all()  # broken by member 0 first: member 1's break does not replace it
    assert (state.submitted[1] == 2).all() and state.fooled[1] and state.flagged[1] and not state.broken[1]
    assert (state.starts[0] == 1).all() and (state.starts[1] == 2).all() and state.has_start.all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_candidates_are_projected_into_the_budget_on_the_8_bit_grid(norm):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    candidate = clean + rng.normal(0, 30, clean.shape)
    for epsilon in (2 / 255, 8 / 255, 0.031, 16 / 255):
        image = into_ball(clean, candidate, norm, epsilon)
        assert image.dtype == np.uint8
        assert (perturbation(clean, image, norm) <= epsilon + 1e-9).all()
        if norm == "linf":  # the largest whole step inside: 8/255 keeps 8 steps, 0.031 = 7.9/255 keeps 7
            assert np.abs(image.astype(int) - clean).max() == int(epsilon * 255 + 1e-6)
    inside = into_ball(clean, clean.astype(float) + 1, norm, 16 / 255)
    assert np.array_equal(inside, np.clip(clean.astype(int) + 1, 0, 255))  # a candidate inside stays as it is
