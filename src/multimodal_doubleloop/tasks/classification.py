"""Classification: one class per row from a label column (default `answer`).

Rows whose text names the answer (`question_type` "class", an ImageFolder prompt)
are classified from the image alone. Metrics: accuracy, macro F1, accuracy per
question type, and VQA accuracy where the table has human `answers` (VQA v2).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_f1_score

from ..data.batching import EncodedSplit
from ..data.sources.vqa_v2 import vqa_accuracy
from ..models.fusion import Features
from ..models.losses import head_loss, total
from .base import TaskContext, TaskEval, TaskLoss, known, model_labels, vocabulary
from .config import TaskConfig


class ClassificationTask:
    """One class per row; hits = argmax correct, over all rows (unknown labels miss)."""

    kind: ClassVar[str] = "classification"
    reads: ClassVar[frozenset[str]] = frozenset({"type", "target"})
    describes: ClassVar[bool] = False

    def __init__(self, name: str, cfg: TaskConfig, vocab: list[str], label_smoothing: float = 0.0):
        self.name, self.cfg, self.vocab = name, cfg, vocab
        self.key = "labels" if cfg.target == "answer" else f"target.{name}"
        self.label_smoothing = label_smoothing  # training.label_smoothing, unless the head sets one
        self.image_only = False  # set when the rows' text names the answer

    @property
    def labels(self) -> list[str]:
        return self.vocab

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        cfg.target = cfg.target or "answer"
        if not isinstance(cfg.target, str):
            raise ValueError(f"classification target must be one column, got {cfg.target!r}")

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]:
        return [cfg.target]

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
        return known(table[cfg.target])

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext):
        vocab = model_labels(ctx, name)
        if vocab is None:
            vocab = list(ctx.answer_vocab) if cfg.target == "answer" else vocabulary(samples, [cfg.target])
        task = cls(name, cfg, vocab, ctx.label_smoothing)
        rows = cls.rows(samples, cfg)
        task.image_only = bool((samples.loc[rows, "question_type"] == "class").all())
        return task

    def head(self, preset: dict, sizes: dict) -> dict:
        head = {"type": "classification", **preset, "num_outputs": len(self.vocab)}
        if self.image_only:
            if head.get("input", "image") != "image":
                raise ValueError(
                    f"task {self.name!r}: the rows' text is a class prompt that names the "
                    f"answer, so the head must read the image only; drop heads.{self.name}.input"
                )
            head["input"] = "image"
        return head

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        if self.key == "labels":
            return {}  # `EncodedSplit.labels` holds the answer indices
        index = {v: i for i, v in enumerate(self.vocab)}
        labels = table[self.cfg.target].astype(str).map(index).fillna(-1).to_numpy(dtype=np.int64)
        return {self.key: torch.as_tensor(labels)}

    def needs_text(self, head: nn.Module) -> bool:
        return head.cfg.input != "image"

    def _terms(self, head: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        return head_loss(head.cfg, logits, labels, self.label_smoothing)  # labels < 0 ignored

    def loss(self, head: nn.Module, features: Features, batch: dict) -> TaskLoss:
        labels = batch[self.key]
        logits = head(features)  # (B, C)
        hits = (logits.detach().argmax(-1) == labels).sum()
        return TaskLoss(self._terms(head, logits, labels), len(labels), hits)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor) -> TaskEval:
        labels = batch[self.key]
        logits = head(features).float()  # (B, C)
        known_rows = labels >= 0
        count = int(known_rows.sum())
        loss_sum = float(total(self._terms(head, logits, labels))) * count if count else 0.0
        hits = int((logits.argmax(-1)[known_rows] == labels[known_rows]).sum())
        return TaskEval(loss_sum, count, hits, {"sample": idx.cpu(), "probs": logits.softmax(-1).cpu()})

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        probabilities = torch.empty(len(split), parts["probs"].shape[1])
        probabilities[parts["sample"]] = parts["probs"]
        labels = split.targets.get(self.key, split.labels)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(1), "labels": labels}

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        rows = torch.tensor(known(table[self.cfg.target]))  # the task's rows
        preds, labels = out["predictions"][rows], out["labels"][rows]
        correct = (preds == labels).numpy()  # answers outside the vocabulary score as wrong
        metrics = {
            "accuracy": float(correct.mean()),
            "macro_f1": float(
                multiclass_f1_score(preds, labels, len(self.vocab), average="macro", ignore_index=-1)
            ),
        }
        if "answers" in table.columns:  # VQA v2: ten human answers per question
            predicted = [self.vocab[int(i)] for i in preds]
            metrics["vqa_accuracy"] = float(np.mean(vqa_accuracy(predicted, table["answers"].to_numpy()[rows.numpy()].tolist())))
        qtypes = table["question_type"].to_numpy()[rows.numpy()]
        for qtype in sorted(set(qtypes)):
            key = "accuracy_" + "".join(c if c.isalnum() else "_" for c in qtype)
            metrics[key] = float(correct[qtypes == qtype].mean())
        return metrics
