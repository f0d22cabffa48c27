"""Evaluation of a task set: one pass over a split accumulated per task, then metrics.

`Evaluation` gathers each task's loss (its training objective), count, hits and
outputs; `task_metrics` turns them into one flat dict whose keys have one shape
whatever the number of tasks: `<task>_<metric>` for every task, plus `loss` (the sum
of the tasks' mean losses) and `accuracy` (the primary task's `<task>_accuracy`, or its
hit rate where it has none, e.g. a caption task).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from ..data.batching import EncodedSplit
from ..data.tokenizer import encode
from .classification import ClassificationTask
from .taskset import TaskSet


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
            out = task.evaluate(model.heads[task.name], features, batch, idx)
            acc = self.sums[task.name]
            acc[0] += out.loss_sum
            acc[1] += out.count
            acc[2] += out.hits
            self.parts[task.name].append(out.parts)

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
        primary = self.tasks.primary
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
    caption is [BOS] words [EOS] padded with [PAD] (a BERT vocabulary has no [BOS] and
    [EOS]: its [CLS] and [SEP] stand in)."""
    names = {"cls_id": "[CLS]", "sep_id": "[SEP]", "bos_id": "[BOS]", "eos_id": "[EOS]", "pad_id": "[PAD]"}
    ids = {k: tokenizer.token_to_id(t) for k, t in names.items()}
    for own, stand_in in (("bos_id", "cls_id"), ("eos_id", "sep_id")):
        ids[own] = ids[stand_in] if ids[own] is None else ids[own]
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
    `<task>_<metric>` (with `<task>_loss`) for each task, plus `loss` and `accuracy`
    (see the module docstring). Caption samples and zero-shot confusions land in
    `context`."""
    metrics = {}
    for task in tasks.tasks:
        out = result["tasks"][task.name]
        values = {"loss": out["loss"], **task.metrics(out, table, context)}
        metrics.update({f"{task.name}_{k}": v for k, v in values.items()})
    metrics["loss"] = result["loss"]
    # the primary task's own accuracy where it reports one (a classification scores
    # answers outside its vocabulary as wrong), else its hit rate
    metrics["accuracy"] = metrics.get(f"{tasks.primary.name}_accuracy", result["accuracy"])
    return metrics
