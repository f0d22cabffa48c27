"""Task types by name: a new type is a module implementing `base.Task` and one line here."""

from __future__ import annotations

from .base import Task
from .caption import CaptionTask
from .classification import ClassificationTask
from .contrastive import ContrastiveTask
from .multilabel import MultilabelTask
from .regression import RegressionTask

TASK_TYPES: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "multilabel": MultilabelTask,
    "regression": RegressionTask,
    "contrastive": ContrastiveTask,
    "caption": CaptionTask,
}


def task_type(kind: str) -> type[Task]:
    if kind not in TASK_TYPES:
        raise ValueError(f"task type {kind!r}: use one of {tuple(TASK_TYPES)}")
    return TASK_TYPES[kind]
