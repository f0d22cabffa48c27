"""Contrastive: image <-> text of description rows (`question_type` "caption" or
"class"), CLIP-style InfoNCE. Metrics: image->text and text->image recall@1/5/10 over
the distinct texts and images of the split (any matching item is a hit), and
zero-shot accuracy from class-name prompts when `zero_shot` names a class column."""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.batching import EncodedSplit
from ..models.fusion import Features
from ..models.heads import ContrastiveOutput
from ..models.losses import head_loss, total
from .base import TaskContext, TaskEval, TaskLoss, description_rows, vocabulary, zero_loss
from .config import TaskConfig
from .metrics import retrieval_recall

logger = logging.getLogger(__name__)


class ContrastiveTask:
    """Image <-> description text; hits = a text's nearest batch image has that text."""

    kind: ClassVar[str] = "contrastive"
    reads: ClassVar[frozenset[str]] = frozenset({"type", "zero_shot", "prompt"})
    describes: ClassVar[bool] = True
    labels = None  # zero-shot classes are an evaluation setting, not head outputs

    def __init__(self, name: str, cfg: TaskConfig, classes: list[str]):
        self.name, self.cfg, self.classes = name, cfg, classes
        self.key = f"target.{name}"

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        if cfg.prompt.count("{}") != 1:
            raise ValueError(f"contrastive prompt={cfg.prompt!r} needs exactly one '{{}}'")

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]:
        return [cfg.zero_shot] if cfg.zero_shot else []

    @classmethod
    def optional_columns(cls, cfg: TaskConfig) -> list[str]:
        """The zero-shot class column: a source without it gets no zero-shot metric."""
        return [cfg.zero_shot] if cfg.zero_shot else []

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
        return description_rows(table)

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext):
        if cfg.zero_shot and cfg.zero_shot not in samples.columns:
            logger.info("task %r: the table has no %r column, so no zero-shot metric", name, cfg.zero_shot)
            cfg = dataclasses.replace(cfg, zero_shot="")
        return cls(name, cfg, vocabulary(samples, [cfg.zero_shot]) if cfg.zero_shot else [])

    def needs_text(self, head: nn.Module) -> bool:
        return True

    def head(self, preset: dict, sizes: dict) -> dict:
        return {"type": "contrastive", "num_outputs": sizes["dim"], **preset}

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Each description row's text id (equal texts share one); -1 for other rows."""
        described = description_rows(table)
        codes, _ = pd.factorize(table["text"].astype(str))
        return {self.key: torch.tensor(np.where(described, codes, -1), dtype=torch.long)}

    def _select(self, head, features, batch) -> tuple[ContrastiveOutput, torch.Tensor]:
        out = head(features)
        rows = batch[self.key] >= 0
        index = batch["image_index"][rows]
        return ContrastiveOutput(out.image_embeds, out.text_embeds[rows], out.logit_scale, index), rows

    def loss(self, head: nn.Module, features: Features, batch: dict):
        """Symmetric InfoNCE over the batch's description texts.

        Equal texts of different images (easy-VQA's 24 captions, ImageFolder's class
        prompts) are positives of every such image, not negatives: when each image has
        one text in the batch, the texts are deduplicated and `contrastive_loss` runs
        with the roles swapped, so image->text is cross-entropy over the distinct
        texts and text->image spreads its target over all images with that text. With
        several texts per image (COCO) it runs in its image-major form."""
        out, rows = self._select(head, features, batch)
        if not len(out.text_embeds):
            return TaskLoss({"contrastive_t2i": zero_loss(out.image_embeds)}, 0, 0)
        text_ids = batch[self.key][rows]  # (B',)
        images = out.image_embeds.shape[0]
        if bool((torch.bincount(out.image_index, minlength=images) <= 1).all()):
            distinct, inverse = torch.unique(text_ids, return_inverse=True)  # (K,), (B',)
            positions = torch.arange(len(text_ids), device=text_ids.device)
            first = torch.full((len(distinct),), len(text_ids), device=text_ids.device)
            first = first.scatter_reduce(0, inverse, positions, reduce="amin")  # (K,)
            swapped = ContrastiveOutput(
                out.text_embeds[first], out.image_embeds[out.image_index], out.logit_scale, inverse
            )
            terms = head_loss(head.cfg, swapped)
            terms = {"contrastive_i2t": terms["contrastive_t2i"], "contrastive_t2i": terms["contrastive_i2t"]}
        else:
            terms = head_loss(head.cfg, out)
        # hit: a text's nearest batch image has that text too
        same = (text_ids[:, None] == text_ids[None, :]).float()  # (B', B')
        relevant = torch.zeros(len(text_ids), images, device=same.device)
        relevant = relevant.index_add_(1, out.image_index, same) > 0  # (B', M)
        nearest = (out.text_embeds.detach() @ out.image_embeds.detach().t()).argmax(1)  # (B',)
        hits = relevant[torch.arange(len(text_ids), device=nearest.device), nearest].sum()
        return TaskLoss(terms, len(text_ids), hits)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        out, rows = self._select(head, features, batch)
        step = self.loss(head, features, batch)
        return TaskEval(float(total(step.terms)) * step.count, step.count, int(step.hits), {
            "image_rows": batch["image_rows"].cpu(),
            "image_embeds": out.image_embeds.float().cpu(),
            "text_ids": batch[self.key][rows].cpu(),
            "text_image_rows": batch["image_rows"][out.image_index].cpu(),
            "text_embeds": out.text_embeds.float().cpu(),
        })

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        return parts

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        # the gallery: images with a description (an image without one is no one's match,
        # yet may look exactly like one: easy-VQA images of unknown colour or shape)
        described = torch.isin(out["image_rows"], out["text_image_rows"])
        image_rows, image_embeds = out["image_rows"][described], out["image_embeds"][described]  # (I,), (I, E)
        texts, first = np.unique(out["text_ids"].numpy(), return_index=True)
        text_embeds = out["text_embeds"][first]  # (K, E) one per distinct text
        image_pos = {int(r): i for i, r in enumerate(image_rows)}
        text_pos = {int(t): k for k, t in enumerate(texts)}
        pairs = torch.tensor(
            sorted(
                {
                    (image_pos[int(r)], text_pos[int(t)])
                    for r, t in zip(out["text_image_rows"], out["text_ids"], strict=True)
                }
            ),
            dtype=torch.long,
        )
        scores = image_embeds @ text_embeds.t()  # (I, K)
        metrics = {"images": len(image_rows), "texts": len(texts)}
        for k, v in retrieval_recall(scores, pairs).items():
            metrics[f"i2t_recall_at_{k}"] = v
        for k, v in retrieval_recall(scores.t().contiguous(), pairs.flip(1)).items():
            metrics[f"t2i_recall_at_{k}"] = v
        if self.cfg.zero_shot:
            metrics.update(self._zero_shot(image_rows, image_embeds, table, context))
        return metrics

    def _zero_shot(self, image_rows, image_embeds, table, context) -> dict:
        """Accuracy of the nearest class prompt to each image; its confusion for a figure."""
        prompts = [self.cfg.prompt.format(c.replace("_", " ")) for c in self.classes]
        prompt_embeds = context["encode_text"](self.name, prompts)  # (C, E)
        predicted = (image_embeds @ prompt_embeds.t()).argmax(1)  # (I,)
        per_image = table.drop_duplicates("image_id").set_index("image_id")[self.cfg.zero_shot]
        ids = [context["image_ids"][int(r)] for r in image_rows]
        index = {c: i for i, c in enumerate(self.classes)}
        truth = torch.tensor([index.get(str(per_image.get(i, "")), -1) for i in ids])
        known = truth >= 0  # images whose class is known (classes unseen in training count as wrong)
        has_class = torch.tensor([pd.notna(per_image.get(i)) and str(per_image.get(i)) != "" for i in ids])
        context.setdefault("confusions", {})[self.name] = (predicted[known], truth[known], self.classes)
        return {
            "zero_shot_accuracy": float((predicted == truth)[has_class].float().mean()),
            "zero_shot_classes": len(self.classes),
        }
