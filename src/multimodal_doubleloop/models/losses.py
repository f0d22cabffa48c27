"""Losses. Each returns a dict of named terms; the total is the sum of the values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> dict[str, torch.Tensor]:
    """Cross-entropy over (B, C) logits; labels < 0 are ignored."""
    return {
        "ce": F.cross_entropy(logits, labels, label_smoothing=label_smoothing, ignore_index=-1)
    }


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(terms.values())
