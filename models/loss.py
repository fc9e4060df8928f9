"""Hinge-based triplet ranking loss of VSE++/SCAN, with a warm-up on the sum over negatives."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.config import TrainConfig


class ContrastiveLoss(nn.Module):
    """Sum of hinge violations in both retrieval directions for a square score matrix.

    ``max_violation`` keeps only the hardest negative per query (the paper's setting);
    ``warmup_epochs`` epochs with the sum over all negatives come first, since hardest
    negatives from a random model give a poor signal (``set_epoch`` switches).
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = True, warmup_epochs: int = 0) -> None:
        super().__init__()
        self.margin = margin
        self.hardest_after_warmup = max_violation
        self.warmup_epochs = warmup_epochs
        self.max_violation = max_violation and warmup_epochs <= 0

    @classmethod
    def from_config(cls, config: TrainConfig) -> ContrastiveLoss:
        return cls(config.margin, config.max_violation, config.warmup_epochs)

    def set_epoch(self, epoch: int) -> None:
        """Epochs count from 0: hardest negatives from epoch ``warmup_epochs`` on (if enabled)."""
        self.max_violation = self.hardest_after_warmup and epoch >= self.warmup_epochs

    def forward(self, scores: Tensor) -> Tensor:
        """scores (n, n), image i matching caption i -> scalar loss."""
        if scores.dim() != 2 or scores.size(0) != scores.size(1):
            raise ValueError(f"scores must be square (n, n), got {tuple(scores.shape)}")
        positives = scores.diagonal()
        diagonal = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
        # row i: image i against every caption (caption retrieval); column j: caption j
        cost_caption = (self.margin + scores - positives[:, None]).clamp(min=0).masked_fill(diagonal, 0)
        cost_image = (self.margin + scores - positives[None, :]).clamp(min=0).masked_fill(diagonal, 0)
        if self.max_violation:
            return cost_caption.amax(dim=1).sum() + cost_image.amax(dim=0).sum()
        return cost_caption.sum() + cost_image.sum()
