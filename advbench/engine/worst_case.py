"""The per-image worst case of a robust evaluation: over an ensemble's members and ascending
budgets, each attacked image keeps the candidate that is worst for the defender.

An image that fools the defended system at some budget is *broken* there and at every larger
budget (its image lies inside every larger ball), so the share of broken images never falls with
the budget: security curves are monotone by construction. A broken row is never attacked or
replaced again (AutoAttack's "attack only what still stands", Croce & Hein 2020); otherwise a
candidate that fools the classifier replaces one that does not. Each member also keeps its own
last candidate per row: its warm start at the next budget.

Pure functions of numpy arrays; the robust stage (:mod:`advbench.stages.robust`) runs the
attacks and asks the defense.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

NONE = -1  # no budget / member


@dataclass
class WorstCase:
    """Per attacked row (N) the worst case so far; ``starts`` per member (M, N, H, W, 3)."""

    submitted: np.ndarray  # uint8 (N, H, W, 3): the image kept, as submitted (before the save)
    stored: np.ndarray  # uint8 (N, H, W, 3): what the system kept of it (after save -> reload)
    fooled: np.ndarray  # bool (N,): the success rule holds on the classifier (before and after the save)
    flagged: np.ndarray  # bool (N,): the detector flags the kept image
    broken: np.ndarray  # bool (N,): the kept image fools the whole defended system
    broken_at: np.ndarray  # int (N,): index of the budget where the row broke first, NONE if not
    member: np.ndarray  # int (N,): the member whose image is kept, NONE for the clean image
    starts: np.ndarray  # uint8 (M, N, H, W, 3): each member's last candidate (its warm start)
    has_start: np.ndarray  # bool (M,): whether the member has run on the rows it had to

    @classmethod
    def fresh(cls, clean: np.ndarray, members: int) -> WorstCase:
        n = len(clean)
        no = np.zeros(n, dtype=bool)
        return cls(clean.copy(), clean.copy(), no.copy(), no.copy(), no.copy(), np.full(n, NONE), np.full(n, NONE),
                   np.repeat(clean[None], members, axis=0), np.zeros(members, dtype=bool))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> WorstCase:
        return cls(**{f.name: np.array(arrays[f.name]) for f in fields(cls)})

    def pending(self) -> np.ndarray:
        """Rows still to attack: not broken."""
        return np.flatnonzero(~self.broken)


def keep_worst(state: WorstCase, rows: np.ndarray, submitted: np.ndarray, stored: np.ndarray, fooled: np.ndarray,
               flagged: np.ndarray, broken: np.ndarray, member: int, budget_index: int) -> np.ndarray:
    """Fold one member's candidates for ``rows`` into ``state``; returns the rows it newly broke.

    Never better for the defender than before: a broken row stays broken with its image; a
    candidate replaces the kept one when it breaks the system, or fools the classifier where the
    kept one does not. The member's warm start becomes this candidate either way."""
    state.starts[member, rows] = submitted
    state.has_start[member] = True
    fresh_break = broken & ~state.broken[rows]
    replace = fresh_break | (fooled & ~state.fooled[rows] & ~state.broken[rows])
    target = rows[replace]
    state.submitted[target] = submitted[replace]
    state.stored[target] = stored[replace]
    state.fooled[target] = fooled[replace]
    state.flagged[target] = flagged[replace]
    state.broken[target] = broken[replace]
    state.member[target] = member
    state.broken_at[rows[fresh_break]] = budget_index
    return rows[fresh_break]


def into_ball(clean: np.ndarray, candidate: np.ndarray, norm: str, epsilon: float) -> np.ndarray:
    """The 8-bit image nearest ``candidate`` (float (N, H, W, 3) in [0, 255]) whose perturbation
    of ``clean`` (uint8) is inside the ``norm`` ball of ``epsilon`` per pixel value: rounded to
    the 8-bit grid, then L∞ clamped to the largest whole step inside the budget, L2 shrunk and
    truncated towards the clean image (both only ever shrink a perturbation)."""
    base = clean.astype(np.float64)
    delta = np.rint(np.clip(candidate, 0, 255)) - base
    if norm == "linf":
        step = np.floor(epsilon * 255 + 1e-6)
        delta = np.clip(delta, -step, step)
    else:
        radius = epsilon * np.sqrt(clean[0].size) * 255
        norms = np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1))
        scale = np.minimum(1.0, radius / np.maximum(norms, 1e-12)).reshape(-1, *([1] * (delta.ndim - 1)))
        delta = np.trunc(delta * scale)
    return np.clip(base + delta, 0, 255).astype(np.uint8)


def perturbation(clean: np.ndarray, image: np.ndarray, norm: str) -> np.ndarray:
    """Per row the ``norm`` size of ``image - clean`` per pixel value (L2 divided by sqrt(D), as
    budgets are)."""
    delta = (image.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), -1) / 255
    if norm == "linf":
        return np.abs(delta).max(1, initial=0.0)
    return np.sqrt((delta**2).sum(1) / max(1, delta.shape[1]))
