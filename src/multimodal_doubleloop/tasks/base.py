"""The interface every task type implements, and the helpers they share.

A task is a named head with its targets, loss and metrics. A task *type* is a class
that implements `Task`; `registry.TASK_TYPES` maps the `type:` of a task definition
to it. The loop and the evaluation only talk to tasks through this protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.batching import EncodedSplit
from ..models.fusion import Features

if TYPE_CHECKING:
    from .config import TaskConfig

DESCRIPTION_ROWS = ("caption", "class")  # question types whose text describes the image


@dataclass
class TaskLoss:
    """One batch of one task (or of the whole task set) in training."""

    terms: dict[str, torch.Tensor]  # named loss terms; the loss is their sum
    count: int  # units scored (rows or images)
    hits: torch.Tensor | int  # of which correct (a device tensor: read it only when logging)
    # The sum of the tasks' own losses, detached: >= 0 whatever the weighting (an
    # uncertainty-weighted total can be negative). What the outer loop reads. None = the
    # sum of `terms`.
    objective: torch.Tensor | None = None


@dataclass
class TaskEval:
    """One batch of one task in evaluation: the training loss summed over its units."""

    loss_sum: float  # the training objective's mean over the batch's units, times `count`
    count: int
    hits: int
    parts: dict = field(default_factory=dict)  # outputs `finish` and `metrics` need


@dataclass
class TaskContext:
    """What building a task may need beyond its definition and the sample table."""

    answer_vocab: list[str]
    special: dict[str, int]  # special token ids (`evaluation.special_ids`)
    label_smoothing: float = 0.0  # training.label_smoothing, for heads that leave it unset
    # Class names per head of a trained model (`trained_model["labels"]`): evaluation and
    # serving read a model's classes from the model, never re-derived from the data.
    labels: dict[str, list[str]] | None = None


class Task(Protocol):
    """A task type. Class-level: what it reads and which rows it uses (ingestion
    needs these before any task exists); instance-level: targets, loss, metrics."""

    kind: ClassVar[str]  # the `type:` of its definitions, and of its head
    reads: ClassVar[frozenset[str]]  # the TaskConfig fields it reads (others must stay default)
    describes: ClassVar[bool]  # it learns from description rows (captions, class prompts)
    name: str
    cfg: TaskConfig
    labels: list[str] | None  # class names of its head's outputs (None: not a class head)

    @classmethod
    def check(cls, cfg: TaskConfig) -> None: ...  # normalise and validate its fields

    @classmethod
    def columns(cls, cfg: TaskConfig) -> list[str]: ...  # table columns it reads

    @classmethod
    def rows(cls, table: pd.DataFrame, cfg: TaskConfig) -> np.ndarray: ...  # (N,) bool

    @classmethod
    def create(cls, name: str, cfg: TaskConfig, samples: pd.DataFrame, ctx: TaskContext) -> Task: ...

    def head(self, preset: dict, sizes: dict) -> dict: ...  # its head's config

    def targets(self, table: pd.DataFrame) -> dict[str, torch.Tensor]: ...  # batch keys

    def needs_text(self, head: nn.Module) -> bool: ...

    def loss(self, head: nn.Module, features: Features, batch: dict) -> TaskLoss: ...

    def evaluate(self, head: nn.Module, features: Features, batch: dict, idx: torch.Tensor) -> TaskEval: ...

    def finish(self, parts: dict, split: EncodedSplit) -> dict: ...  # merged parts -> outputs

    def metrics(self, out: dict, table: pd.DataFrame, context: dict) -> dict: ...


# --- helpers the task types share ----------------------------------------------------


def known(values: pd.Series) -> np.ndarray:
    """True where a target value is present ("" and NaN are unknown)."""
    if pd.api.types.is_numeric_dtype(values):
        return values.notna().to_numpy()
    return (values.fillna("").astype(str) != "").to_numpy()


def first_row_per_image(table: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(table), dtype=bool)
    first = table.loc[candidates, "image_id"].drop_duplicates().index
    keep[table.index.get_indexer(first)] = True
    return keep


def description_rows(table: pd.DataFrame) -> np.ndarray:
    return table["question_type"].isin(DESCRIPTION_ROWS).to_numpy()


def vocabulary(table: pd.DataFrame, columns: list[str]) -> list[str]:
    """Sorted distinct non-empty values the training rows have in `columns`."""
    train = table[table["split"] == "train"]
    values = set()
    for column in columns:
        values |= {str(v) for v in train[column].dropna().unique() if str(v)}
    return sorted(values)


def model_labels(ctx: TaskContext, name: str) -> list[str] | None:
    """The class names a trained model holds for head `name` (None: no trained model)."""
    if ctx.labels is None:
        return None
    if name not in ctx.labels:
        raise ValueError(
            f"the trained model has no class names for head {name!r} (it has {sorted(ctx.labels)}); "
            "evaluate with the tasks the model was trained on (params:tasks)"
        )
    return list(ctx.labels[name])


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """A zero loss that still depends on x, so backward works on an empty selection."""
    return x.float().sum() * 0.0


def first_in_batch(image_index: torch.Tensor, images: int) -> torch.Tensor:
    """(M,) the first row of each batch image (image-major batches give each one a row)."""
    rows = torch.arange(len(image_index), device=image_index.device)
    first = torch.full((images,), len(image_index), device=image_index.device, dtype=torch.long)
    return first.scatter_reduce(0, image_index, rows, reduce="amin")


def per_image(features: Features) -> Features:
    """Features whose per-sample view is one row per image."""
    return dataclasses.replace(features, image_index=None)


def image_head(name: str, head: dict) -> dict:
    """A head that must read the image (per-image targets, generated text)."""
    if head.get("input", "image") != "image":
        raise ValueError(
            f"task {name!r} ({head['type']}) learns a per-image target or text the fused "
            f"stream has read; its head must read the image: drop heads.{name}.input"
        )
    return {**head, "input": "image"}
