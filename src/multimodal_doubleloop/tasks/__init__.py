"""Tasks: what a run learns. Each task is a named head with its targets, loss and metrics.

One module per task type (`classification`, `multilabel`, `regression`,
`contrastive`, `caption`), each implementing the `base.Task` protocol and listed
once in `registry.TASK_TYPES`; `config` turns `params:tasks` into dataclasses,
`rows` picks each task's rows of the sample table, `taskset` combines the active
tasks into one loss, `evaluation` scores a split and `metrics` holds the text and
retrieval metrics. Plain PyTorch and pandas: nothing here imports training or Kedro.
Easy-VQA derives `color`, `shape`, `color_shape`, `coverage` and caption rows on
request; see `data.sources.easy_vqa`.
"""

from .base import Task, TaskContext, TaskEval, TaskLoss
from .config import TaskConfig, TasksConfig
from .evaluation import Evaluation, evaluation_context, special_ids, task_metrics
from .registry import TASK_TYPES
from .rows import select_rows, task_rows
from .taskset import TaskSet

__all__ = [
    "TASK_TYPES",
    "Evaluation",
    "Task",
    "TaskConfig",
    "TaskContext",
    "TaskEval",
    "TaskLoss",
    "TaskSet",
    "TasksConfig",
    "evaluation_context",
    "select_rows",
    "special_ids",
    "task_metrics",
    "task_rows",
]
