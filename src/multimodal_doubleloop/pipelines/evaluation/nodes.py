"""Evaluation node: every task's test metrics, a figure, generated caption samples."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from torchmetrics.functional.classification import multiclass_confusion_matrix  # noqa: E402

from ...data.batching import encoded_split  # noqa: E402
from ...data.images import image_store  # noqa: E402
from ...data.splits import require_test_rows  # noqa: E402
from ...models.serving import load_trained_model  # noqa: E402
from ...tasks import (  # noqa: E402
    TaskContext,
    TasksConfig,
    TaskSet,
    evaluation_context,
    special_ids,
    task_metrics,
)
from ...tasks.classification import ClassificationTask  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.evaluate import evaluate  # noqa: E402
from ...training.precision import resolve_device  # noqa: E402

logger = logging.getLogger(__name__)


def evaluate_model(
    trained_model: dict,
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    training_params: dict,
    tokenizer: str,
    tasks_params: dict | None = None,
) -> tuple[dict, dict, plt.Figure, list[dict]]:
    """Metrics on the `test` split (JSON-ready, and the same for MLflow), a figure
    (confusion matrix of the first classification or zero-shot task) and generated
    caption samples. Metric keys: `test_<task>_<metric>` for every task, plus
    `test_loss` and `test_accuracy` (the primary task's); see `tasks.evaluation`. Class
    names come from the trained model (`trained_model["labels"]`), as in serving."""
    require_test_rows(samples, "to evaluate on")  # before building the model
    cfg = TrainConfig.from_dict(training_params)
    tok = Tokenizer.from_str(tokenizer)
    context = TaskContext(answer_vocab, special_ids(tok), cfg.label_smoothing, trained_model.get("labels"))
    tasks = TaskSet.build(TasksConfig.from_dict(tasks_params), samples, context)
    model = load_trained_model(trained_model).to(resolve_device(cfg.device))
    split = encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, "test")
    tasks.attach_targets(split, samples, "test")
    result = evaluate(model, split, image_store(images), cfg, tasks)
    context = evaluation_context(model, tok, encoded_texts["input_ids"].shape[1], images["image_ids"])
    table = samples[samples["split"] == "test"].reset_index(drop=True)
    metrics = {f"test_{k}": v for k, v in task_metrics(tasks, result, table, context).items()}
    metrics["test_samples"] = len(split)
    logger.info("Test metrics: %s", metrics)
    figure = task_figure(tasks, result, context)
    mlflow_metrics = {k: {"value": v, "step": 0} for k, v in metrics.items()}
    return metrics, mlflow_metrics, figure, context.get("caption_samples", [])


def task_figure(tasks: TaskSet, result: dict, context: dict) -> plt.Figure:
    """The confusion matrix of the first task that predicts classes (classification,
    or contrastive zero-shot); a note saying so when no task does."""
    for task in tasks.tasks:
        if isinstance(task, ClassificationTask):
            out = result["tasks"][task.name]
            known = out["labels"] >= 0
            confusion = multiclass_confusion_matrix(
                out["predictions"][known], out["labels"][known], len(task.vocab)
            )
            return confusion_figure(confusion.numpy(), task.vocab)
        if task.name in context.get("confusions", {}):
            predicted, truth, classes = context["confusions"][task.name]
            confusion = multiclass_confusion_matrix(predicted, truth, len(classes))
            return confusion_figure(confusion.numpy(), classes, f"Zero-shot confusion ({task.name})")
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"no class predictions: tasks {tasks.names}", ha="center", va="center")
    return fig


def confusion_figure(
    confusion: np.ndarray, labels: list[str], title: str = "Test confusion matrix"
) -> plt.Figure:
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        for i, j in zip(*np.nonzero(confusion), strict=True):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(f"{title} (counts; colour = row rate)")
    fig.tight_layout()
    return fig
