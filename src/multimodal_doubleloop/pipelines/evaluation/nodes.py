"""Evaluation node: test accuracy overall and per question type, confusion matrix."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score  # noqa: E402

from ...data.batching import encoded_split  # noqa: E402
from ...data.images import image_store  # noqa: E402
from ...models import ModelConfig, build_model  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.loop import evaluate  # noqa: E402
from ...training.precision import resolve_device  # noqa: E402

logger = logging.getLogger(__name__)


def load_trained_model(trained_model: dict) -> torch.nn.Module:
    model = build_model(ModelConfig.from_dict(trained_model["config"]))
    model.load_state_dict(trained_model["state_dict"])
    return model.eval()


def evaluate_model(
    trained_model: dict,
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    training_params: dict,
) -> tuple[dict, dict, plt.Figure]:
    """Metrics on the `test` split: JSON-ready dict, the same for MLflow, and a
    row-normalised confusion matrix figure."""
    cfg = TrainConfig.from_dict(training_params)
    model = load_trained_model(trained_model).to(resolve_device(cfg.device))
    split = encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, "test")
    if not len(split):
        raise ValueError("the sample table has no 'test' rows to evaluate on")
    result = evaluate(model, split, image_store(images), cfg)
    preds, labels = torch.as_tensor(result["predictions"]), split.labels
    correct = (preds == labels).numpy()
    qtypes = samples.loc[samples["split"] == "test", "question_type"].to_numpy()
    metrics = {
        "test_accuracy": float(correct.mean()),
        "test_loss": float(result["loss"]),
        "test_macro_f1": float(
            multiclass_f1_score(preds, labels.clamp(min=0), len(answer_vocab), average="macro")
        ),
        "test_samples": len(split),
    }
    for qtype in sorted(set(qtypes)):
        key = "test_accuracy_" + "".join(c if c.isalnum() else "_" for c in qtype)
        metrics[key] = float(correct[qtypes == qtype].mean())
    logger.info("Test metrics: %s", metrics)
    known = labels >= 0
    confusion = multiclass_confusion_matrix(preds[known], labels[known], len(answer_vocab)).numpy()
    return metrics, {k: {"value": v, "step": 0} for k, v in metrics.items()}, confusion_figure(confusion, answer_vocab)


def confusion_figure(confusion: np.ndarray, labels: list[str]) -> plt.Figure:
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
    ax.set_title("Test confusion matrix (counts; colour = row rate)")
    fig.tight_layout()
    return fig
