"""Caption: the text of description rows, generated from the image ([CLS]/[SEP] of
the encoded text become [BOS]/[EOS]). Metrics: BLEU-1..4, CIDEr-D, exact match;
generated samples are kept for an artifact."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.batching import EncodedSplit
from ..models.fusion import Features
from ..models.losses import head_loss, total
from .base import (  # noqa: E501
    DESCRIPTION_ROWS,
    TaskContext,
    TaskEval,
    TaskLoss,
    description_rows,
    image_head,
    per_image,
    zero_loss,
)
from .config import TaskConfig
from .metrics import bleu, caption_words, cider_d


class CaptionTask:
    """Description text generated from the image; hits = whole caption right under
    teacher forcing. Evaluation decodes (greedy or beam) one caption per image."""

    kind: ClassVar[str] = "caption"
    reads: ClassVar[frozenset[str]] = frozenset({"type", "beam_size", "num_samples"})
    describes: ClassVar[bool] = True
    labels = None

    def __init__(self, name: str, cfg: TaskConfig, special: dict[str, int], label_smoothing: float = 0.0):
        self.name, self.cfg, self.special = name, cfg, special
        self.key = f"target.{name}"
        self.label_smoothing = label_smoothing  # training.label_smoothing, unless the head sets one

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        pass

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]:
        return []

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
        return description_rows(table)

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext):
        return cls(name, cfg, ctx.special, ctx.label_smoothing)

    def needs_text(self, head: nn.Module) -> bool:
        return False

    def head(self, preset: dict, sizes: dict) -> dict:
        head = {
            "type": "caption",
            **preset,
            "num_outputs": sizes["vocab_size"],
            "max_length": sizes["max_length"],
            **{k: self.special[k] for k in ("bos_id", "eos_id", "pad_id")},
        }
        return image_head(self.name, head)

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        return {self.key: torch.tensor(description_rows(table))}

    def _caption_ids(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch[self.key]
        ids = batch["input_ids"][rows]  # (B', T) [CLS] words [SEP] [PAD]...
        ids = torch.where(ids == self.special["cls_id"], self.special["bos_id"], ids)
        ids = torch.where(ids == self.special["sep_id"], self.special["eos_id"], ids)
        return ids, rows

    def loss(self, head: nn.Module, features: Features, batch: dict):
        ids, rows = self._caption_ids(batch)
        if not len(ids):
            return TaskLoss({"caption_ce": zero_loss(features.pooled)}, 0, 0)
        sub = dataclasses.replace(features, image_index=batch["image_index"][rows])
        logits = head(sub, ids)  # (B', L, V)
        terms = head_loss(head.cfg, logits, ids, self.label_smoothing)
        target = ids[:, 1:]
        right = (logits.detach()[:, :-1].argmax(-1) == target) | (target == self.special["pad_id"])
        return TaskLoss(terms, len(ids), right.all(1).sum())

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        step = self.loss(head, features, batch)
        per_image_features = per_image(features)
        if self.cfg.beam_size > 1:
            generated = head.beam(per_image_features, beam_size=self.cfg.beam_size)
        else:
            generated = head.greedy(per_image_features)
        return TaskEval(float(total(step.terms)) * step.count, step.count, int(step.hits), {
            "image_rows": batch["image_rows"].cpu(),
            "generated": list(generated.cpu()),  # (M,) of (L,) ids
        })

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        return parts

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        described = table[table["question_type"].isin(DESCRIPTION_ROWS)]
        references = described.groupby("image_id", sort=False)["text"].agg(list)
        ids = [context["image_ids"][int(r)] for r in out["image_rows"]]
        keep = [i for i, image_id in enumerate(ids) if image_id in references.index]
        candidates = [context["decode"](out["generated"][i].tolist()) for i in keep]
        refs = [references[ids[i]] for i in keep]
        exact = [
            " ".join(caption_words(c)) in {" ".join(caption_words(r)) for r in rs}
            for c, rs in zip(candidates, refs, strict=True)
        ]
        b = bleu(candidates, refs)
        context.setdefault("caption_samples", []).extend(
            {"task": self.name, "image_id": ids[i], "generated": c, "references": list(rs)}
            for i, c, rs in list(zip(keep, candidates, refs, strict=True))[: self.cfg.num_samples]
        )
        return {
            "bleu1": b[0],
            "bleu2": b[1],
            "bleu3": b[2],
            "bleu4": b[3],
            "cider_d": cider_d(candidates, refs),
            "exact_match": float(np.mean(exact)),
            "images": len(keep),
        }
