"""Tasks: what a run learns. Each task is a named head with its targets, loss and metrics.

Task types and where their targets come from (the canonical table, `data.schema`):

- classification: a label column (default `answer`) -> one class per row. Rows whose
  text names the answer (`question_type` "class", an ImageFolder prompt) are
  classified from the image alone. Metrics: accuracy, macro F1 (+ accuracy per
  question type).
- multilabel: the values of several columns (easy-VQA: `color`, `shape`) -> one
  label set per image; head reads the image. Metrics: micro/macro F1 at 0.5, mAP,
  exact (subset) match.
- regression: a numeric column (easy-VQA: `coverage`) -> one value per image; head
  reads the image. Metrics: MAE, RMSE.
- contrastive: image <-> text of description rows (`question_type` "caption" or
  "class"), CLIP-style InfoNCE. Metrics: image->text and text->image recall@1/5/10
  over the distinct texts and images of the split (any matching item is a hit), and
  zero-shot accuracy from class-name prompts when `zero_shot` names a class column.
- caption: the text of description rows, generated from the image ([CLS]/[SEP] of
  the encoded text become [BOS]/[EOS]). Metrics: BLEU-1..4, CIDEr-D, exact match;
  generated samples are kept for an artifact.

Several active tasks make a multi-task run on one model (one head per task); their
losses combine by learned uncertainty weighting (Kendall et al. 2018) or a plain sum.
Easy-VQA derives `color`, `shape`, `color_shape`, `coverage` and caption rows on
request; see `data.sources.easy_vqa`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
)
from torchmetrics.functional.regression import mean_absolute_error, mean_squared_error

from ..data.batching import EncodedSplit
from ..data.tokenizer import encode
from ..models.fusion import Features
from ..models.heads import ContrastiveOutput
from ..models.losses import UncertaintyWeighting, classification_loss, head_loss, total
from ..models.strict import build
from .metrics import bleu, caption_words, cider_d, retrieval_recall

logger = logging.getLogger(__name__)

TASK_TYPES = ("classification", "multilabel", "regression", "contrastive", "caption")
PER_IMAGE = ("multilabel", "regression")  # one target per image, read from the image
DESCRIPTION_ROWS = ("caption", "class")  # question types whose text describes the image
WEIGHTINGS = ("uncertainty", "sum")
_COMMON = {"type"}
TASK_FIELDS = {
    "classification": _COMMON | {"target"},
    "multilabel": _COMMON | {"target"},
    "regression": _COMMON | {"target", "hit_tolerance"},
    "contrastive": _COMMON | {"zero_shot", "prompt"},
    "caption": _COMMON | {"beam_size", "num_samples"},
}


@dataclass
class TaskConfig:
    type: str = "classification"  # classification | multilabel | regression | contrastive | caption
    # classification: the label column ("" = answer); multilabel: the columns whose
    # values are the labels; regression: a numeric column
    target: str | list[str] = ""
    zero_shot: str = ""  # contrastive: class column for zero-shot accuracy; "" = none
    prompt: str = "a photo of a {}"  # contrastive zero-shot prompt; {} = class name
    beam_size: int = 1  # caption decoding at evaluation; 1 = greedy
    num_samples: int = 32  # caption: generated test captions kept as an artifact
    # regression: |error| that counts as a hit in train/val accuracy (a fraction, for coverage)
    hit_tolerance: float = 0.02

    def __post_init__(self):
        if self.type not in TASK_TYPES:
            raise ValueError(f"task type {self.type!r}: use one of {TASK_TYPES}")
        unread = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in TASK_FIELDS[self.type] and getattr(self, f.name) != f.default
        ]
        if unread:
            raise ValueError(
                f"task type {self.type!r} does not read {unread} (it reads {sorted(TASK_FIELDS[self.type])})"
            )
        if self.type == "classification":
            self.target = self.target or "answer"
        if self.type == "multilabel":
            target = self.target
            self.target = ([target] if target else []) if isinstance(target, str) else list(target)
        if self.type in ("classification", "regression") and not isinstance(self.target, str):
            raise ValueError(f"{self.type} target must be one column, got {self.target!r}")
        if self.type in PER_IMAGE and not self.target:
            raise ValueError(f"{self.type} task needs `target`: the table column(s) to learn")
        if self.type == "contrastive" and self.prompt.count("{}") != 1:
            raise ValueError(f"contrastive prompt={self.prompt!r} needs exactly one '{{}}'")
        if self.beam_size < 1 or self.num_samples < 0 or self.hit_tolerance < 0:
            raise ValueError(
                f"beam_size={self.beam_size} must be >= 1, num_samples={self.num_samples} and "
                f"hit_tolerance={self.hit_tolerance} >= 0"
            )

    @property
    def columns(self) -> list[str]:
        """Table columns the task reads."""
        if self.type == "multilabel":
            return list(self.target)
        if self.type in ("classification", "regression"):
            return [self.target]
        return [self.zero_shot] if self.zero_shot else []


@dataclass
class TasksConfig:
    # Names from `definitions` trained together; two or more make a multi-task run.
    active: list[str] | str = field(default_factory=lambda: ["answer"])
    weighting: str = "uncertainty"  # multi-task loss: uncertainty (learned) | sum
    definitions: dict[str, TaskConfig] = field(default_factory=lambda: {"answer": TaskConfig()})

    def __post_init__(self):
        if isinstance(self.active, str):  # `--params tasks.active=caption+retrieval`
            self.active = [a for a in re.split(r"[+,\s]+", self.active) if a]
        self.active = list(self.active)
        unknown = [a for a in self.active if a not in self.definitions]
        if not self.active or unknown or len(set(self.active)) != len(self.active):
            raise ValueError(
                f"tasks.active={self.active} must name distinct tasks of tasks.definitions "
                f"{sorted(self.definitions)} (unknown: {unknown})"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"tasks.weighting={self.weighting!r}: use one of {WEIGHTINGS}")

    @classmethod
    def from_dict(cls, params: dict | None) -> TasksConfig:
        """Unknown keys and wrong types fail with their key path; None = answer classification."""
        if params is None:
            return cls()
        definitions = params.get("definitions", {})
        if not isinstance(definitions, dict):
            raise ValueError("tasks.definitions must be a mapping of task name -> settings")
        nested = {
            "definitions": {
                name: build(TaskConfig, spec, f"tasks.definitions.{name}")
                for name, spec in definitions.items()
            }
        }
        return build(cls, params, "tasks", nested)

    def selected(self) -> dict[str, TaskConfig]:
        return {name: self.definitions[name] for name in self.active}

    def required_columns(self) -> set[str]:
        return {c for t in self.selected().values() for c in t.columns}

    def needs_description_rows(self) -> bool:
        return any(t.type in ("contrastive", "caption") for t in self.selected().values())


# --- which rows of the table each task uses ---------------------------------------


def _known(values: pd.Series) -> np.ndarray:
    """True where a target value is present ("" and NaN are unknown)."""
    if pd.api.types.is_numeric_dtype(values):
        return values.notna().to_numpy()
    return (values.fillna("").astype(str) != "").to_numpy()


def _first_row_per_image(table: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(table), dtype=bool)
    first = table.loc[candidates, "image_id"].drop_duplicates().index
    keep[table.index.get_indexer(first)] = True
    return keep


def task_rows(table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray:
    """Rows a task trains on: labelled rows (classification), description rows
    (contrastive, caption) or one row per image with a known target (per-image tasks)."""
    missing = [c for c in cfg.columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{cfg.type} task reads column(s) {missing} the sample table lacks (it has "
            f"{list(table.columns)}); easy-VQA derives color, shape, color_shape, coverage. "
            "For other sources drop the task from tasks.active (e.g. tasks.active=answer)"
        )
    if cfg.type == "classification":
        return _known(table[cfg.target])
    if cfg.type in ("contrastive", "caption"):
        return table["question_type"].isin(DESCRIPTION_ROWS).to_numpy()
    known = np.logical_and.reduce([_known(table[c]) for c in cfg.columns])
    return _first_row_per_image(table, known)


def select_rows(table: pd.DataFrame, tasks: TasksConfig) -> pd.DataFrame:
    """The rows any active task uses; fails naming a task that has no training row."""
    table = table.reset_index(drop=True)
    keep = np.zeros(len(table), dtype=bool)
    train = (table["split"] == "train").to_numpy()
    for name, cfg in tasks.selected().items():
        rows = task_rows(table, cfg)
        if not (rows & train).any():
            raise ValueError(
                f"task {name!r} ({cfg.type}) has no training rows in this table (sources: "
                f"{sorted(set(table['source']))}); pick tasks the source supports"
            )
        keep |= rows
    if not keep.all():
        logger.info("Tasks %s use %d of %d rows", tasks.active, int(keep.sum()), len(table))
    return table.loc[keep].reset_index(drop=True)


# --- per-task training and evaluation -----------------------------------------------


@dataclass
class StepResult:
    terms: dict[str, torch.Tensor]  # named loss terms; the loss is their sum
    count: int  # units the primary task scored (rows or images)
    hits: torch.Tensor | int  # of which correct (a device tensor: read it only when logging)


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A zero loss that still depends on x, so backward works on an empty selection."""
    return x.float().sum() * 0.0


def _first_in_batch(image_index: torch.Tensor, images: int) -> torch.Tensor:
    """(M,) the first row of each batch image (image-major batches give each one a row)."""
    rows = torch.arange(len(image_index), device=image_index.device)
    first = torch.full((images,), len(image_index), device=image_index.device, dtype=torch.long)
    return first.scatter_reduce(0, image_index, rows, reduce="amin")


def _per_image(features: Features) -> Features:
    """Features whose per-sample view is one row per image."""
    return dataclasses.replace(features, image_index=None)


def _vocabulary(table: pd.DataFrame, columns: list[str]) -> list[str]:
    """Sorted distinct non-empty values the training rows have in `columns`."""
    train = table[table["split"] == "train"]
    values = set()
    for column in columns:
        values |= {str(v) for v in train[column].dropna().unique() if str(v)}
    return sorted(values)


class ClassificationTask:
    """One class per row; hits = argmax correct, over all rows (unknown labels miss)."""

    def __init__(self, name: str, cfg: TaskConfig, vocab: list[str], label_smoothing: float):
        self.name, self.cfg, self.vocab = name, cfg, vocab
        self.key = "labels" if cfg.target == "answer" else f"target.{name}"
        self.label_smoothing = label_smoothing  # training.label_smoothing, unless the head sets one
        self.image_only = False  # set when the rows' text names the answer

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

    def loss(self, head: nn.Module, features: Features, batch: dict):
        labels = batch[self.key]
        logits = head(features)  # (B, C)
        if head.cfg.loss_kind == "ce":
            smoothing = head.cfg.label_smoothing or self.label_smoothing
            terms = classification_loss(logits.float(), labels, smoothing)
        else:
            terms = head_loss(head.cfg, logits, labels)
        return terms, (logits.detach().argmax(-1) == labels).sum(), len(labels)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        labels = batch[self.key]
        logits = head(features).float()
        loss = float(F.cross_entropy(logits, labels, reduction="sum", ignore_index=-1))
        known = labels >= 0
        hits = int((logits.argmax(-1)[known] == labels[known]).sum())
        return loss, int(known.sum()), hits, {"sample": idx.cpu(), "probs": logits.softmax(-1).cpu()}

    def finish(self, parts: dict, split: EncodedSplit) -> dict:
        probabilities = torch.empty(len(split), parts["probs"].shape[1])
        probabilities[parts["sample"]] = parts["probs"]
        labels = split.targets.get(self.key, split.labels)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(1), "labels": labels}

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict:
        rows = torch.tensor(_known(table[self.cfg.target]))  # the task's rows
        preds, labels = out["predictions"][rows], out["labels"][rows]
        correct = (preds == labels).numpy()  # answers outside the vocabulary score as wrong
        metrics = {
            "accuracy": float(correct.mean()),
            "macro_f1": float(
                multiclass_f1_score(preds, labels, len(self.vocab), average="macro", ignore_index=-1)
            ),
        }
        qtypes = table["question_type"].to_numpy()[rows.numpy()]
        for qtype in sorted(set(qtypes)):
            key = "accuracy_" + "".join(c if c.isalnum() else "_" for c in qtype)
            metrics[key] = float(correct[qtypes == qtype].mean())
        return metrics

    def needs_text(self, head: nn.Module) -> bool:
        return head.cfg.input != "image"


class MultilabelTask:
    """A label set per image from the image; hits = every label right at 0.5."""

    def __init__(self, name: str, cfg: TaskConfig, vocab: list[str]):
        self.name, self.cfg, self.vocab = name, cfg, vocab
        self.key = f"target.{name}"

    def head(self, preset: dict, sizes: dict) -> dict:
        return _image_head(self.name, {"type": "multilabel", **preset, "num_outputs": len(self.vocab)})

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        index = {v: i for i, v in enumerate(self.vocab)}
        target = np.zeros((len(table), len(self.vocab)), dtype=np.float32)
        known = np.ones(len(table), dtype=bool)
        for column in self.cfg.target:
            values = table[column].fillna("").astype(str).to_numpy()
            known &= values != ""
            for row, value in enumerate(values):
                if value in index:
                    target[row, index[value]] = 1.0
        target[~known] = -1.0  # unknown: the image is left out
        return {self.key: torch.from_numpy(target)}

    def _select(self, head, features, batch):
        logits = head(_per_image(features)).float()  # (M, L)
        target = batch[self.key][_first_in_batch(batch["image_index"], len(logits))]  # (M, L)
        known = target[:, 0] >= 0
        return logits[known], target[known], known

    def loss(self, head: nn.Module, features: Features, batch: dict):
        logits, target, _ = self._select(head, features, batch)
        terms = head_loss(head.cfg, logits, target) if len(target) else {"bce": _zero(logits)}
        hits = ((logits.detach() > 0) == (target > 0.5)).all(1).sum()
        return terms, hits, len(target)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        logits, target, _ = self._select(head, features, batch)
        loss = float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum")) / max(
            len(self.vocab), 1
        )
        hits = int(((logits > 0) == (target > 0.5)).all(1).sum())
        return loss, len(target), hits, {"probs": logits.sigmoid().cpu(), "target": target.cpu()}

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

    def needs_text(self, head: nn.Module) -> bool:
        return False


class RegressionTask:
    """A number per image from the image; hits = |error| <= hit_tolerance."""

    def __init__(self, name: str, cfg: TaskConfig):
        self.name, self.cfg = name, cfg
        self.key = f"target.{name}"

    def head(self, preset: dict, sizes: dict) -> dict:
        return _image_head(self.name, {"type": "regression", **preset, "num_outputs": 1})

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        values = pd.to_numeric(table[self.cfg.target], errors="raise").to_numpy(dtype=np.float32)
        return {self.key: torch.from_numpy(values)}  # NaN = unknown

    def _select(self, head, features, batch):
        pred = head(_per_image(features)).float()  # (M,)
        target = batch[self.key][_first_in_batch(batch["image_index"], len(pred))]  # (M,)
        known = ~torch.isnan(target)
        return pred[known], target[known]

    def loss(self, head: nn.Module, features: Features, batch: dict):
        pred, target = self._select(head, features, batch)
        terms = head_loss(head.cfg, pred, target) if len(target) else {head.cfg.loss_kind: _zero(pred)}
        hits = ((pred.detach() - target).abs() <= self.cfg.hit_tolerance).sum()
        return terms, hits, len(target)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        pred, target = self._select(head, features, batch)
        loss = float(F.mse_loss(pred, target, reduction="sum"))
        hits = int(((pred - target).abs() <= self.cfg.hit_tolerance).sum())
        return loss, len(target), hits, {"pred": pred.cpu(), "target": target.cpu()}

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

    def needs_text(self, head: nn.Module) -> bool:
        return False


class ContrastiveTask:
    """Image <-> description text; hits = a text's nearest batch image has that text."""

    def __init__(self, name: str, cfg: TaskConfig, classes: list[str]):
        self.name, self.cfg, self.classes = name, cfg, classes
        self.key = f"target.{name}"

    def head(self, preset: dict, sizes: dict) -> dict:
        return {"type": "contrastive", "num_outputs": sizes["dim"], **preset}

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Each description row's text id (equal texts share one); -1 for other rows."""
        described = table["question_type"].isin(DESCRIPTION_ROWS).to_numpy()
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
            return {"contrastive_t2i": _zero(out.image_embeds)}, 0, 0
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
        return terms, hits, len(text_ids)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        out, rows = self._select(head, features, batch)
        terms, hits, count = self.loss(head, features, batch)
        return float(total(terms)) * count, count, hits, {
            "image_rows": batch["image_rows"].cpu(),
            "image_embeds": out.image_embeds.float().cpu(),
            "text_ids": batch[self.key][rows].cpu(),
            "text_image_rows": batch["image_rows"][out.image_index].cpu(),
            "text_embeds": out.text_embeds.float().cpu(),
        }

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

    def needs_text(self, head: nn.Module) -> bool:
        return True


class CaptionTask:
    """Description text generated from the image; hits = whole caption right under
    teacher forcing. Evaluation decodes (greedy or beam) one caption per image."""

    def __init__(self, name: str, cfg: TaskConfig, special: dict[str, int]):
        self.name, self.cfg, self.special = name, cfg, special
        self.key = f"target.{name}"

    def head(self, preset: dict, sizes: dict) -> dict:
        head = {
            "type": "caption",
            **preset,
            "num_outputs": sizes["vocab_size"],
            "max_length": sizes["max_length"],
            **{k: self.special[k] for k in ("bos_id", "eos_id", "pad_id")},
        }
        return _image_head(self.name, head)

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]:
        return {self.key: torch.tensor(table["question_type"].isin(DESCRIPTION_ROWS).to_numpy())}

    def _caption_ids(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch[self.key]
        ids = batch["input_ids"][rows]  # (B', T) [CLS] words [SEP] [PAD]...
        ids = torch.where(ids == self.special["cls_id"], self.special["bos_id"], ids)
        ids = torch.where(ids == self.special["sep_id"], self.special["eos_id"], ids)
        return ids, rows

    def loss(self, head: nn.Module, features: Features, batch: dict):
        ids, rows = self._caption_ids(batch)
        if not len(ids):
            return {"caption_ce": _zero(features.pooled)}, 0, 0
        sub = dataclasses.replace(features, image_index=batch["image_index"][rows])
        logits = head(sub, ids)  # (B', L, V)
        terms = head_loss(head.cfg, logits, ids)
        target = ids[:, 1:]
        right = (logits.detach()[:, :-1].argmax(-1) == target) | (target == self.special["pad_id"])
        return terms, right.all(1).sum(), len(ids)

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor):
        terms, hits, count = self.loss(head, features, batch)
        per_image = _per_image(features)
        if self.cfg.beam_size > 1:
            generated = head.beam(per_image, beam_size=self.cfg.beam_size)
        else:
            generated = head.greedy(per_image)
        return float(total(terms)) * count, count, hits, {
            "image_rows": batch["image_rows"].cpu(),
            "generated": list(generated.cpu()),  # (M,) of (L,) ids
        }

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

    def needs_text(self, head: nn.Module) -> bool:
        return False


def _image_head(name: str, head: dict) -> dict:
    if head.get("input", "image") != "image":
        raise ValueError(
            f"task {name!r} ({head['type']}) learns a per-image target or text the fused "
            f"stream has read; its head must read the image: drop heads.{name}.input"
        )
    return {**head, "input": "image"}


# --- the set of tasks of a run -------------------------------------------------------


class TaskSet:
    """The active tasks: targets for the splits, head configs, the combined loss, and
    evaluation. The first task is the primary one: its hits are the run's accuracy."""

    def __init__(self, tasks: list, weighting: str = "uncertainty"):
        self.tasks = tasks
        self.weighting = None
        if len(tasks) > 1 and weighting == "uncertainty":
            self.weighting = UncertaintyWeighting([t.name for t in tasks])

    @classmethod
    def answer_only(cls, head: str = "answer", label_smoothing: float = 0.0) -> TaskSet:
        """Answer classification on `EncodedSplit.labels`: the loop's default."""
        return cls([ClassificationTask(head, TaskConfig(), [], label_smoothing)])

    @classmethod
    def build(
        cls,
        cfg: TasksConfig,
        samples: pd.DataFrame,
        answer_vocab: list[str],
        special: dict[str, int],
        label_smoothing: float = 0.0,
    ) -> TaskSet:
        """Tasks with their vocabularies, from the training rows of `samples`."""
        tasks = []
        for name, t in cfg.selected().items():
            task_rows(samples, t)  # fails early on a missing column
            if t.type == "classification":
                vocab = answer_vocab if t.target == "answer" else _vocabulary(samples, [t.target])
                task = ClassificationTask(name, t, vocab, label_smoothing)
                rows = task_rows(samples, t)
                task.image_only = bool((samples.loc[rows, "question_type"] == "class").all())
            elif t.type == "multilabel":
                task = MultilabelTask(name, t, _vocabulary(samples, t.target))
            elif t.type == "regression":
                task = RegressionTask(name, t)
            elif t.type == "contrastive":
                classes = _vocabulary(samples, [t.zero_shot]) if t.zero_shot else []
                task = ContrastiveTask(name, t, classes)
            else:
                task = CaptionTask(name, t, special)
            tasks.append(task)
        return cls(tasks, cfg.weighting)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def head_configs(self, preset_heads: dict, sizes: dict) -> dict[str, dict]:
        """One head per task: the preset's settings for that name, completed with the
        sizes the data decides (`sizes`: vocab_size, max_length, dim)."""
        heads = {}
        for task in self.tasks:
            preset = copy.deepcopy(preset_heads.get(task.name, {}))
            expected = {
                ClassificationTask: "classification",
                MultilabelTask: "multilabel",
                RegressionTask: "regression",
                ContrastiveTask: "contrastive",
                CaptionTask: "caption",
            }[type(task)]
            if preset.get("type", expected) != expected:
                raise ValueError(
                    f"model preset head {task.name!r} has type {preset['type']!r} but task "
                    f"{task.name!r} is {expected!r}; rename the task or the head"
                )
            heads[task.name] = task.head(preset, sizes)
        return heads

    def attach_targets(self, split: EncodedSplit, table: pd.DataFrame, name: str) -> EncodedSplit:
        """`split` (rows of `table` in split `name`) with every task's targets."""
        rows = table[table["split"] == name]
        for task in self.tasks:
            split.targets.update(task.targets(rows))
        return split

    def to(self, device) -> TaskSet:
        if self.weighting is not None:
            self.weighting.to(device)
        return self

    def parameters(self) -> list[nn.Parameter]:
        """Learned loss weights; the loop adds them to the optimiser as group "loss_weights"."""
        return list(self.weighting.parameters()) if self.weighting is not None else []

    def state_dict(self) -> dict:
        return self.weighting.state_dict() if self.weighting is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.weighting is not None:
            self.weighting.load_state_dict(state)

    def features(self, model: nn.Module, batch: dict) -> Features:
        inputs = {"images": batch["images"], "image_index": batch["image_index"]}
        if any(t.needs_text(model.heads[t.name]) for t in self.tasks):
            inputs.update(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return model.features(**inputs)

    def step(self, model: nn.Module, batch: dict) -> StepResult:
        """Named loss terms of one batch and the primary task's hits."""
        features = self.features(model, batch)
        losses, scored = {}, []
        for task in self.tasks:
            terms, hits, count = task.loss(model.heads[task.name], features, batch)
            losses[task.name] = terms
            scored.append((count, hits))
        if len(self.tasks) == 1:
            terms = losses[self.tasks[0].name]
        elif self.weighting is not None:
            terms = self.weighting({name: total(t) for name, t in losses.items()})
        else:
            terms = {f"{name}.{k}": v for name, t in losses.items() for k, v in t.items()}
        count, hits = scored[0]
        return StepResult(terms, count, hits)

    def evaluation(self) -> Evaluation:
        return Evaluation(self)

    def describe(self) -> dict:
        """The settings that shape training (task order, definitions, weighting)."""
        return {
            "active": [t.name for t in self.tasks],
            "weighting": "uncertainty" if self.weighting is not None else "sum",
            "definitions": {t.name: dataclasses.asdict(t.cfg) for t in self.tasks},
        }

    def weights(self) -> dict[str, float]:
        """Current loss weight per task (1.0 each without uncertainty weighting)."""
        if self.weighting is None:
            return {t.name: 1.0 for t in self.tasks}
        return self.weighting.weights()


class Evaluation:
    """Accumulates one pass over a split: per task a loss sum, a count, hits and the
    outputs its metrics need."""

    def __init__(self, tasks: TaskSet):
        self.tasks = tasks
        self.sums = {t.name: [0.0, 0, 0] for t in tasks.tasks}  # loss sum, count, hits
        self.parts: dict[str, list[dict]] = {t.name: [] for t in tasks.tasks}

    def add(self, model: nn.Module, batch: dict, idx: torch.Tensor) -> None:
        features = self.tasks.features(model, batch)
        for task in self.tasks.tasks:
            loss, count, hits, parts = task.evaluate(model.heads[task.name], features, batch, idx)
            acc = self.sums[task.name]
            acc[0] += loss
            acc[1] += count
            acc[2] += int(hits)
            self.parts[task.name].append(parts)

    def result(self, split: EncodedSplit) -> dict:
        """`loss` (sum of per-task mean losses), `accuracy` (primary task hit rate),
        `tasks` (per-task outputs), plus `predictions`/`probabilities` when the primary
        task is a classification."""
        outputs = {}
        for task in self.tasks.tasks:
            parts = self.parts[task.name]
            merged = {}
            for key in parts[0] if parts else {}:
                values = [p[key] for p in parts]
                merged[key] = sum(values, []) if isinstance(values[0], list) else torch.cat(values)
            outputs[task.name] = {
                **task.finish(merged, split),
                "loss": self.sums[task.name][0] / max(self.sums[task.name][1], 1),
            }
        primary = self.tasks.tasks[0]
        _, count, hits = self.sums[primary.name]
        result = {
            "loss": sum(o["loss"] for o in outputs.values()),
            "accuracy": hits / count if count else float("nan"),
            "tasks": outputs,
        }
        if isinstance(primary, ClassificationTask):
            out = outputs[primary.name]
            known = out["labels"] >= 0
            if known.any():  # as a float32 mean, as the loop always reported it
                result["accuracy"] = float((out["predictions"][known] == out["labels"][known]).float().mean())
            result["predictions"] = out["predictions"].numpy()
            result["probabilities"] = out["probabilities"].numpy()
        return result


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens tasks use: [CLS]/[SEP] frame encoded texts, and a
    caption is [BOS] words [EOS] padded with [PAD]."""
    names = {"cls_id": "[CLS]", "sep_id": "[SEP]", "bos_id": "[BOS]", "eos_id": "[EOS]", "pad_id": "[PAD]"}
    ids = {k: tokenizer.token_to_id(t) for k, t in names.items()}
    missing = [names[k] for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer lacks special token(s) {missing}; retrain it (data.tokenizer)")
    return ids


def evaluation_context(model: nn.Module, tokenizer: Tokenizer, max_length: int, image_ids: list) -> dict:
    """What task metrics need beyond their outputs: text embeddings of prompts
    (`encode_text(task, texts)`, through the text tower and the contrastive head's
    text projection), caption decoding (`decode(ids)`) and the image ids by store row."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def encode_text(task: str, texts: list[str]) -> torch.Tensor:
        ids, mask = encode(tokenizer, texts, max_length)
        length = max(int(mask.sum(1).max()), 1)
        features = model.features(
            input_ids=torch.as_tensor(ids[:, :length], dtype=torch.long, device=device),
            attention_mask=torch.as_tensor(mask[:, :length], dtype=torch.long, device=device),
        )
        projected = model.heads[task].text_proj(features.text_pooled)  # (C, E)
        return F.normalize(projected.float(), dim=-1).cpu()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    return {"encode_text": encode_text, "decode": decode, "image_ids": list(image_ids)}


def task_metrics(tasks: TaskSet, result: dict, table: pd.DataFrame, context: dict) -> dict:
    """Metrics of every task on one split (`table`: its rows, in split order):
    `<metric>` for a single task, else `<task>_<metric>`; plus `loss` (summed
    per-task mean losses). With several tasks the primary (first) task's metrics also
    appear under their plain keys, so `accuracy` always means the primary task's.
    Caption samples and zero-shot confusions land in `context`."""
    metrics = {}
    single = len(tasks.tasks) == 1
    for task in tasks.tasks:
        out = result["tasks"][task.name]
        values = {"loss": out["loss"], **task.metrics(out, table, context)}
        if single:
            values.pop("loss")
        metrics.update({(k if single else f"{task.name}_{k}"): v for k, v in values.items()})
        if task is tasks.tasks[0] and not single:  # the primary task's also under plain keys
            metrics.update({k: v for k, v in values.items() if k != "loss"})
    metrics["loss"] = result["loss"]
    return metrics
