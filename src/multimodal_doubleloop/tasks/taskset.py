"""The set of tasks a run trains: targets for the splits, heads, the combined loss.

Several active tasks make a multi-task run on one model (one head per task); their
losses combine by learned uncertainty weighting (Kendall et al. 2018) or a plain sum.
The first task is the primary one: its hits are the run's accuracy.
"""

from __future__ import annotations

import copy
import dataclasses

import pandas as pd
from torch import nn

from ..data.batching import EncodedSplit
from ..models.fusion import Features
from ..models.losses import UncertaintyWeighting, total
from .base import Task, TaskContext, TaskLoss
from .classification import ClassificationTask
from .config import TaskConfig, TasksConfig
from .registry import task_type
from .rows import task_rows


class TaskSet:
    """The active tasks: targets for the splits, head configs, the combined loss."""

    def __init__(self, tasks: list[Task], weighting: str = "uncertainty"):
        self.tasks = tasks
        self.weighting = None
        if len(tasks) > 1 and weighting == "uncertainty":
            self.weighting = UncertaintyWeighting([t.name for t in tasks])

    @classmethod
    def answer_only(cls, head: str = "answer", label_smoothing: float = 0.0) -> TaskSet:
        """Answer classification on `EncodedSplit.labels` (vocabulary from the model's head)."""
        return cls([ClassificationTask(head, TaskConfig(), [], label_smoothing)])

    @classmethod
    def build(cls, cfg: TasksConfig, samples: pd.DataFrame, ctx: TaskContext) -> TaskSet:
        """The active tasks of `cfg`, with their vocabularies: from `ctx.labels` (a trained
        model's) when given, else from the training rows of `samples`."""
        tasks = []
        for name, definition in cfg.selected().items():
            task_rows(samples, definition, name)  # fails early on a missing column
            tasks.append(task_type(definition.type).create(name, definition, samples, ctx))
        return cls(tasks, cfg.weighting)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def primary(self) -> Task:
        return self.tasks[0]

    def labels(self) -> dict[str, list[str]]:
        """Class names per head that predicts classes (saved with the trained model)."""
        return {t.name: list(t.labels) for t in self.tasks if t.labels}

    def head_configs(self, preset_heads: dict, sizes: dict) -> dict[str, dict]:
        """One head per task: the preset's settings for that name, completed with the
        sizes the data decides (`sizes`: vocab_size, max_length, dim)."""
        heads = {}
        for task in self.tasks:
            preset = copy.deepcopy(preset_heads.get(task.name, {}))
            if preset.get("type", task.kind) != task.kind:
                raise ValueError(
                    f"model preset head {task.name!r} has type {preset['type']!r} but task "
                    f"{task.name!r} is {task.kind!r}; rename the task or the head"
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
        return model.features(**inputs, fused_tokens=model.reads_fused_tokens(self.names))

    def step(self, model: nn.Module, batch: dict) -> TaskLoss:
        """Named loss terms of one batch, and the primary task's count and hits."""
        features = self.features(model, batch)
        results = {task.name: task.loss(model.heads[task.name], features, batch) for task in self.tasks}
        if len(self.tasks) == 1:
            terms = results[self.primary.name].terms
        elif self.weighting is not None:
            terms = self.weighting({name: total(r.terms) for name, r in results.items()})
        else:
            terms = {f"{name}.{k}": v for name, r in results.items() for k, v in r.terms.items()}
        primary = results[self.primary.name]
        objective = sum(total(r.terms).detach().float() for r in results.values())
        return TaskLoss(terms, primary.count, primary.hits, objective)

    def describe(self) -> dict:
        """The settings that shape training (task order, definitions, weighting)."""
        return {
            "active": self.names,
            "weighting": "uncertainty" if self.weighting is not None else "sum",
            "definitions": {t.name: dataclasses.asdict(t.cfg) for t in self.tasks},
        }

    def weights(self) -> dict[str, float]:
        """Current loss weight per task (1.0 each without uncertainty weighting)."""
        if self.weighting is None:
            return {t.name: 1.0 for t in self.tasks}
        return self.weighting.weights()
