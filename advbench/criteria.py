"""The paper's two success rules for adversarial images, as pure tensor functions (§2.2).

- targeted: the target class probability is at least ``threshold`` (0.99 in the paper);
- non-targeted: the original top-1 label is no longer among the top-k labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def target_labels(top1: torch.Tensor, shift: int, num_classes: int) -> torch.Tensor:
    """Target = (top-1 + shift) mod C, the paper's 100-step right shift on ImageNet."""
    return (top1 + shift) % num_classes


def targeted_success(logits: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=1)
    return probs.gather(1, targets.view(-1, 1)).squeeze(1) >= threshold


def untargeted_success(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return ~(topk == labels.view(-1, 1)).any(dim=1)


@dataclass(frozen=True)
class PaperCriterion:
    """Callable on logits (N, C) -> bool (N,). ``subset`` restricts it to some rows."""

    targeted: bool
    labels: torch.Tensor
    targets: torch.Tensor | None
    k: int = 5
    threshold: float = 0.99

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            return targeted_success(logits, self.targets.to(logits.device), self.threshold)
        return untargeted_success(logits, self.labels.to(logits.device), self.k)

    def subset(self, index) -> PaperCriterion:
        targets = None if self.targets is None else self.targets[index]
        return PaperCriterion(self.targeted, self.labels[index], targets, self.k, self.threshold)
