"""Which rows of the sample table each task uses (ingestion keeps only those)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .config import TaskConfig, TasksConfig
from .registry import task_type

logger = logging.getLogger(__name__)


def task_rows(table: pd.DataFrame, cfg: TaskConfig, name: str = "", source: str = "") -> np.ndarray:
    """(N,) bool: the rows a task trains on (see each type's `rows`); fails naming the
    columns a task reads that the table lacks, the source, and what to set."""
    optional = getattr(task_type(cfg.type), "optional_columns", lambda _: [])(cfg)
    missing = [c for c in cfg.columns if c not in table.columns and c not in optional]
    if missing:
        if not source and "source" in table:
            source = ", ".join(sorted(set(table["source"])))
        fix = f"drop it from tasks.active (keep the tasks {source or 'this source'} supports)"
        raise ValueError(
            f"{cfg.type} task {name!r} reads column(s) {missing} that the {source or 'sample'} table "
            f"lacks (it has {list(table.columns)}); {fix}. easy-VQA derives color, shape, "
            "color_shape, coverage; a table source keeps `labels` and `target` (ingestion.table)"
        )
    return task_type(cfg.type).rows(table, cfg)


def select_rows(table: pd.DataFrame, tasks: TasksConfig, source: str = "") -> pd.DataFrame:
    """The rows any active task uses; fails naming a task that has no training row."""
    table = table.reset_index(drop=True)
    keep = np.zeros(len(table), dtype=bool)
    train = (table["split"] == "train").to_numpy()
    for name, cfg in tasks.selected().items():
        rows = task_rows(table, cfg, name, source)
        if not (rows & train).any():
            raise ValueError(
                f"task {name!r} ({cfg.type}) has no training rows in this table (sources: "
                f"{sorted(set(table['source']))}); pick tasks the source supports"
            )
        keep |= rows
    if not keep.all():
        logger.info("Tasks %s use %d of %d rows", tasks.active, int(keep.sum()), len(table))
    return table.loc[keep].reset_index(drop=True)
