"""Multi-label: the values of several columns (easy-VQA: `color`, `shape`) as one
label set per image, read from the image; a value "a|b" is two labels (a table
source's `labels` column). Metrics: micro/macro F1 at 0.5, mAP,
exact (subset) match."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
)

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
    model_labels,
    per_image,
    vocabulary,
    zero_loss,
)
from .config import TaskConfig

SEPARATOR = "|"  # a column may hold several labels per row, "a|b" (a table source's `labels`)


class MultilabelTask:
    """A label set per image from the image; hits = every label right at 0.5."""

    kind: ClassVar[str] = "multilabel"
    reads: ClassVar[frozenset[str]] = frozenset({"type", "target"})
    describes: ClassVar[bool] = False

    def __init__(self, name: str, cfg: TaskConfig, vocab: list[str]):
        self.name, self.cfg, self.vocab = name, cfg, vocab
        self.key = f"target.{name}"

    @property
    def labels(self) -> list[str]:
        return self.vocab

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        target = cfg.target
        cfg.target = ([target] if target else []) if isinstance(target, str) else list(target)
        if not cfg.target:
            raise ValueError("multilabel task needs `target`: the table column(s) to learn")

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]:
        return list(cfg.target)

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
        labelled = np.logical_and.reduce([known(table[c]) for c in cls.columns(cfg)])
        return first_row_per_image(table, labelled)

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext):
        vocab = model_labels(ctx, name)
        if vocab is None:
            vocab = sorted({label for value in vocabulary(samples, cfg.target) for label in value.split(SEPARATOR)} - {""})
        return cls(name, cfg, vocab)

    def head(self, preset: dict, sizes: dict) -> dict:
        return image_head(self.name, {"type": "multilabel", **preset, "num_outputs": len(self.vocab)})

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        index = {v: i for i, v in enumerate(self.vocab)}
        target = np.zeros((len(table), len(self.vocab)), dtype=np.float32)
        labelled = np.ones(len(table), dtype=bool)
        for column in self.cfg.target:
            values = table[column].fillna("").astype(str).to_numpy()
            labelled &= values != ""
            for row, value in enumerate(values):
                for label in value.split(SEPARATOR):
                    if label in index:
                        target[row, index[label]] = 1.0
        target[~labelled] = -1.0  # unknown: the image is left out
        return {self.key: torch.from_numpy(target)}

    def needs_text(self, head: nn.Module) -> bool:
        return False

    def _select(self, head, features, batch):
        logits = head(per_image(features)).float()  # (M, L)
        target = batch[self.key][first_in_batch(batch["image_index"], len(logits))]  # (M, L)
        labelled = target[:, 0] >= 0
        return logits[labelled], target[labelled]

    def loss(self, head: nn.Module, features: Features, batch: dict) -> TaskLoss:
        logits, target = self._select(head, features, batch)
        terms = head_loss(head.cfg, logits, target) if len(target) else {"bce": zero_loss(logits)}
        hits = ((logits.detach() > 0) == (target > 0.5)).all(1).sum()
        return TaskLoss(terms, len(target), hits)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor) -> TaskEval:
        logits, target = self._select(head, features, batch)
        loss_sum = float(total(head_loss(head.cfg, logits, target))) * len(target) if len(target) else 0.0
        hits = int(((logits > 0) == (target > 0.5)).all(1).sum())
        return TaskEval(loss_sum, len(target), hits, {"probs": logits.sigmoid().cpu(), "target": target.cpu()})

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        return parts

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        probs, target = out["probs"], out["target"].long()
        n = len(self.vocab)
        metrics = {
            "micro_f1": multilabel_f1_score(probs, target, n, average="micro"),
            "macro_f1": multilabel_f1_score(probs, target, n, average="macro"),
            "map": multilabel_average_precision(probs, target, n, average="macro"),
            "exact_match": multilabel_exact_match(probs, target, n),
        }
        return {**{k: float(v) for k, v in metrics.items()}, "images": len(target)}
