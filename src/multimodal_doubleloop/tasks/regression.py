"""Regression: a numeric column (easy-VQA: `coverage`) as one value per image, read
from the image. Metrics: MAE, RMSE (and the target's spread, the RMSE of the mean)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.functional.regression import mean_absolute_error, mean_squared_error

from ..data.batching import EncodedSplit
from ..models.fusion import Features
from ..models.losses import head_loss, total
from .base import (
    TaskContext,
    TaskEval,
    TaskLoss,
    first_in_batch,
    first_row_per_image,
    image_head,
    known,
    per_image,
    zero_loss,
)
from .config import TaskConfig


class RegressionTask:
    """A number per image from the image; hits = |error| <= hit_tolerance."""

    kind: ClassVar[str] = "regression"
    reads: ClassVar[frozenset[str]] = frozenset({"type", "target", "hit_tolerance"})
    describes: ClassVar[bool] = False
    labels = None

    def __init__(self, name: str, cfg: TaskConfig):
        self.name, self.cfg = name, cfg
        self.key = f"target.{name}"

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        if not isinstance(cfg.target, str):
            raise ValueError(f"regression target must be one column, got {cfg.target!r}")
        if not cfg.target:
            raise ValueError("regression task needs `target`: the table column(s) to learn")

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]:
        return [cfg.target]

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
        return first_row_per_image(table, known(table[cfg.target]))

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext):
        return cls(name, cfg)

    def head(self, preset: dict, sizes: dict) -> dict:
        return image_head(self.name, {"type": "regression", **preset, "num_outputs": 1})

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        values = pd.to_numeric(table[self.cfg.target], errors="raise").to_numpy(dtype=np.float32)
        return {self.key: torch.from_numpy(values)}  # NaN = unknown

    def needs_text(self, head: nn.Module) -> bool:
        return False

    def _select(self, head, features, batch):
        pred = head(per_image(features)).float()  # (M,)
        target = batch[self.key][first_in_batch(batch["image_index"], len(pred))]  # (M,)
        labelled = ~torch.isnan(target)
        return pred[labelled], target[labelled]

    def loss(self, head: nn.Module, features: Features, batch: dict) -> TaskLoss:
        pred, target = self._select(head, features, batch)
        terms = head_loss(head.cfg, pred, target) if len(target) else {head.cfg.loss_kind: zero_loss(pred)}
        hits = ((pred.detach() - target).abs() <= self.cfg.hit_tolerance).sum()
        return TaskLoss(terms, len(target), hits)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor) -> TaskEval:
        pred, target = self._select(head, features, batch)
        loss_sum = float(total(head_loss(head.cfg, pred, target))) * len(target) if len(target) else 0.0
        hits = int(((pred - target).abs() <= self.cfg.hit_tolerance).sum())
        return TaskEval(loss_sum, len(target), hits, {"pred": pred.cpu(), "target": target.cpu()})

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        return parts

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        pred, target = out["pred"], out["target"]
        return {
            "mae": float(mean_absolute_error(pred, target)),
            "rmse": float(mean_squared_error(pred, target, squared=False)),
            "target_std": float(target.std(unbiased=False)),  # RMSE of predicting the mean
            "images": len(target),
        }
