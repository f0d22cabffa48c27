"""Task heads. Each reads `Features` and returns its task's raw outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fusion import Features


@dataclass
class HeadConfig:
    type: str = "classification"  # classification | regression | multilabel
    num_outputs: int = 13  # classes, labels or regression targets
    hidden: int = 256  # 0 = a single linear layer
    dropout: float = 0.0
    label_smoothing: float = 0.0  # classification loss option

    def __post_init__(self):
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head type {self.type!r}: use one of {sorted(HEAD_TYPES)}")
        if self.num_outputs < 1:
            raise ValueError(f"head num_outputs={self.num_outputs} must be >= 1")


class PooledHead(nn.Module):
    """LayerNorm + MLP on the pooled fused feature: logits or regression values."""

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        if cfg.hidden:
            self.net = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, cfg.hidden),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, cfg.num_outputs),
            )
        else:
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.num_outputs))
        self.squeeze = cfg.type == "regression" and cfg.num_outputs == 1

    def forward(self, features: Features) -> torch.Tensor:
        out = self.net(features.pooled)  # (B, num_outputs)
        return out.squeeze(-1) if self.squeeze else out


HEAD_TYPES = {"classification": PooledHead, "regression": PooledHead, "multilabel": PooledHead}


def build_head(dim: int, cfg: HeadConfig) -> nn.Module:
    return HEAD_TYPES[cfg.type](dim, cfg)
