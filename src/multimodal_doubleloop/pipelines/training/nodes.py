"""Training node: build the configured model and train it on the encoded samples."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from ...data.batching import encoded_split  # noqa: E402
from ...data.images import AugmentConfig  # noqa: E402
from ...data.schema import table_fingerprint  # noqa: E402
from ...data.tokenizer import fingerprint  # noqa: E402
from ...models import resolve_model_config  # noqa: E402
from ...models.starting_point import StartingPoint  # noqa: E402
from ...tasks import TaskContext, TasksConfig, TaskSet, special_ids  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.fit import fit_any  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What a run trains from: config, tasks, the model config, splits with targets."""

    train_cfg: TrainConfig
    tasks: TaskSet
    model_config: dict
    splits: dict  # train, val (EncodedSplit with every task's targets)
    run_config: dict  # every parameter of the run (stored with checkpoints)


def prepare_training(
    samples: pd.DataFrame,
    encoded_texts: dict,
    image_ids: list,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
    tasks_params: dict | None,
    splits: tuple[str, ...] = ("train", "val"),
    start: StartingPoint | None = None,
    augment: dict | None = None,
) -> Prepared:
    """Configs, task set, model config and encoded splits of a run (shared by the
    train node and the controller study, so both train the same thing). `start`
    reshapes the model to the checkpoints it starts from and joins the run's identity,
    as does the training augmentation (`images["augment"]`) when it is on."""
    train_cfg = TrainConfig.from_dict(training_params)
    tok = Tokenizer.from_str(tokenizer)
    tasks = TaskSet.build(
        TasksConfig.from_dict(tasks_params), samples, TaskContext(answer_vocab, special_ids(tok), train_cfg.label_smoothing)
    )
    model_config = resolve_model_config(
        model_params, tok.get_vocab_size(), encoded_texts["input_ids"].shape[1], heads=tasks.head_configs
    )
    if start is not None and not start.empty:
        model_config = start.model_config(model_config)
        check_text_tokens(start, tokenizer, model_config)
    encoded = {
        s: tasks.attach_targets(encoded_split(samples, encoded_texts, image_ids, answer_vocab, s), samples, s)
        for s in splits
    }
    run_config = {
        "model": model_config,
        "training": train_cfg.to_dict(),
        "tasks": tasks.describe(),  # resuming under other task settings is refused
        # the data's content, not only its size: a table of other images or answers with
        # the same texts (the same tokenizer) must not resume this run's checkpoints
        "data": {
            "train_samples": len(encoded["train"]),
            "tokenizer_sha256": fingerprint(tokenizer),
            "samples_sha256": table_fingerprint(samples),
        },
    }
    if start is not None and not start.empty:  # another starting point is another run
        run_config["init"] = dict(start.sources)
    if augment and AugmentConfig(**augment).enabled:  # off: the identity runs had before it counted
        run_config["data"]["augment"] = augment
    return Prepared(train_cfg, tasks, model_config, encoded, run_config)


def train_model(
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
    tasks_params: dict | None = None,
    initial_weights: StartingPoint | None = None,
) -> tuple[dict, dict, list[dict]]:
    """Returns the trained model (config + weights), MLflow metric histories (with
    the controller's decisions as `controller/...` when it is on) and the per-epoch
    history table. `initial_weights` (the catalog's) is where the model starts from."""
    run = prepare_training(
        samples, encoded_texts, images["image_ids"], answer_vocab, tokenizer, model_params, training_params,
        tasks_params, start=initial_weights, augment=images.get("augment"),
    )
    weights, state, trace = fit_any(
        run.model_config, run.splits, images, run.train_cfg, run.run_config, run.tasks, initial_weights
    )
    curves = {
        key: [{"step": row["epoch"], "value": float(row[key])} for row in state.history if key in row]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "questions_per_s")
    }
    curves["step_loss"] = [{"step": r["step"], "value": r["loss"]} for r in state.step_log]
    curves["lr"] = [{"step": r["step"], "value": r["lr"]} for r in state.step_log]
    curves["step_val_accuracy"] = [{"step": r["step"], "value": r["val_accuracy"]} for r in state.val_log]
    curves.update(trace)
    # labels: class names per head, the one source evaluation and serving read them from
    trained = {"config": run.model_config, "state_dict": weights, "labels": run.tasks.labels()}
    return trained, {k: v for k, v in curves.items() if v}, state.history


def check_text_tokens(start: StartingPoint, tokenizer: str, model_config: dict) -> None:
    """A previous run's text tower reads token ids: this run's tokenizer must be the one
    it was trained with (handed on with the weights, or recorded in a checkpoint)."""
    if start.previous is None or not model_config.get("text"):
        return
    if not any(k.startswith("text.") for k in start.previous["state_dict"]):
        return
    expected = fingerprint(start.tokenizer) if start.tokenizer is not None else start.tokenizer_sha256
    if expected != fingerprint(tokenizer):
        raise ValueError(
            f"model.init_from={start.requested.get('init_from')!r}: its text tower was trained with "
            f"{'another tokenizer' if expected else 'a tokenizer it does not record'} than this run's; start "
            "from trained_model@<version>, models:/... or runs:/... (they hand theirs on), or put its "
            "tokenizer.json beside the file"
        )


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
