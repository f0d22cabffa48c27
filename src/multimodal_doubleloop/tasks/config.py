"""Task definitions as dataclasses: `params:tasks` becomes a `TasksConfig` here."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..config import build

WEIGHTINGS = ("uncertainty", "sum")


@dataclass
class TaskConfig:
    type: str = "classification"  # a key of tasks.registry.TASK_TYPES
    # classification: the label column ("" = answer); multilabel: the columns whose
    # values are the labels; regression: a numeric column
    target: str | list[str] = ""
    # contrastive: class column for zero-shot accuracy; "" or None (an empty `--params`
    # value) = none
    zero_shot: str | None = ""
    prompt: str = "a photo of a {}"  # contrastive zero-shot prompt; {} = class name
    beam_size: int = 1  # caption decoding at evaluation; 1 = greedy
    num_samples: int = 32  # caption: generated test captions kept as an artifact
    # regression: |error| that counts as a hit in train/val accuracy (a fraction, for coverage)
    hit_tolerance: float = 0.02

    def __post_init__(self):
        from .registry import task_type  # the registry imports the task modules, which import this

        kind = task_type(self.type)
        self.zero_shot = self.zero_shot or ""
        unread = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in kind.reads and getattr(self, f.name) != f.default
        ]
        if unread:
            raise ValueError(
                f"task type {self.type!r} does not read {unread} (it reads {sorted(kind.reads)})"
            )
        kind.check(self)
        if self.beam_size < 1 or self.num_samples < 0 or self.hit_tolerance < 0:
            raise ValueError(
                f"beam_size={self.beam_size} must be >= 1, num_samples={self.num_samples} and "
                f"hit_tolerance={self.hit_tolerance} >= 0"
            )

    @property
    def columns(self) -> list[str]:
        """Table columns the task reads."""
        from .registry import task_type

        return task_type(self.type).columns(self)


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
        from .registry import task_type

        return any(task_type(t.type).describes for t in self.selected().values())
