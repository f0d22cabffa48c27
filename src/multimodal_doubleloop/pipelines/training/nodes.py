"""Training node: build the configured model and train it on the encoded samples."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from ...data.batching import encoded_split  # noqa: E402
from ...data.tokenizer import fingerprint  # noqa: E402
from ...models import resolve_model_config  # noqa: E402
from ...tasks import TaskContext, TasksConfig, TaskSet, special_ids  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.fit import fit_any  # noqa: E402

logger = logging.getLogger(__name__)


def train_model(
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
    tasks_params: dict | None = None,
) -> tuple[dict, dict, list[dict]]:
    """Returns the trained model (config + weights), MLflow metric histories (with
    the controller's decisions as `controller/...` when it is on) and the per-epoch
    history table."""
    train_cfg = TrainConfig.from_dict(training_params)
    vocab_size = Tokenizer.from_str(tokenizer).get_vocab_size()
    context = TaskContext(answer_vocab, special_ids(Tokenizer.from_str(tokenizer)), train_cfg.label_smoothing)
    tasks = TaskSet.build(TasksConfig.from_dict(tasks_params), samples, context)
    model_config = resolve_model_config(
        model_params, vocab_size, encoded_texts["input_ids"].shape[1], heads=tasks.head_configs
    )
    splits = {
        s: tasks.attach_targets(
            encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, s), samples, s
        )
        for s in ("train", "val")
    }
    run_config = {
        "model": model_config,
        "training": train_cfg.to_dict(),
        "tasks": tasks.describe(),  # resuming under other task settings is refused
        "data": {
            "train_samples": len(splits["train"]),
            "tokenizer_sha256": fingerprint(tokenizer),
        },
    }
    weights, state, trace = fit_any(model_config, splits, images, train_cfg, run_config, tasks)
    curves = {
        key: [{"step": row["epoch"], "value": float(row[key])} for row in state.history if key in row]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "questions_per_s")
    }
    curves["step_loss"] = [{"step": r["step"], "value": r["loss"]} for r in state.step_log]
    curves["lr"] = [{"step": r["step"], "value": r["lr"]} for r in state.step_log]
    curves.update(trace)
    # labels: class names per head, the one source evaluation and serving read them from
    trained = {"config": model_config, "state_dict": weights, "labels": tasks.labels()}
    return trained, {k: v for k, v in curves.items() if v}, state.history


def plot_controller_decisions(training_curves: dict) -> plt.Figure:
    """Per-group LR and weight-decay multipliers over steps (flat at 1 when the
    controller is off). Accepts kedro-mlflow's loaded form, where a one-point
    history comes back as a dict."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, kind in zip(axes, ("lr_scale", "wd_scale"), strict=True):
        prefix = f"controller/{kind}/"
        for name, points in sorted(training_curves.items()):
            if name.startswith(prefix):
                points = sorted(points if isinstance(points, list) else [points], key=lambda p: p["step"])
                ax.step([p["step"] for p in points], [p["value"] for p in points], where="post",
                        label=name[len(prefix):])
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log", base=2)
        ax.set_xlabel("step")
        ax.set_title(f"{kind.replace('_', ' ')} per group")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "controller off (method: fixed)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
