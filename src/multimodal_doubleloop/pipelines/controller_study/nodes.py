"""Controller study nodes: train every (method, base LR) cell, then tabulate and plot.

A cell is one (method, base LR) pair, trained once per seed in `seeds`. For one
seed, every cell starts from the same initial weights and sees the same batches;
only the base learning rate and the outer loop differ. Runs train for a fixed step
budget without validation and are scored on a fixed subset of the test split (the
first `test_images` test images with all their questions). At this budget one
seed's accuracy moves by 2-3 points from seed to seed, so the table reports each
cell's mean over the seeds (and its spread); a single seed cannot resolve 1 point.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from ...config import build  # noqa: E402
from ...data.batching import EncodedSplit, encoded_split, first_images  # noqa: E402
from ...data.images import image_store  # noqa: E402
from ...models import ModelConfig, build_model, resolve_model_config  # noqa: E402
from ...tasks import TaskSet  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.controller import METHODS  # noqa: E402
from ...training.evaluate import evaluate  # noqa: E402
from ...training.fit import fit_any  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    base_lrs: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    model_preset: str = "cpu"
    training: dict = field(default_factory=dict)  # overrides of params:training in every cell
    controller: dict = field(default_factory=dict)  # training.controller of the adaptive cells
    test_images: int = 0  # score on the first N test images (all their questions); 0 = all
    seeds: list[int] = field(default_factory=lambda: [0])  # training.seed of each run of a cell

    def __post_init__(self):
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"controller_study.methods={self.methods!r}: use a subset of {METHODS}")
        if not self.base_lrs or any(lr <= 0 for lr in self.base_lrs):
            raise ValueError(f"controller_study.base_lrs={self.base_lrs!r} must be positive")
        owned = sorted({"lr", "controller", "seed"} & set(self.training))
        if owned:
            raise ValueError(f"controller_study.training sets {owned}; the study sets these per cell")
        if "method" in self.controller:
            raise ValueError("controller_study.controller.method is set per cell; remove it")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"controller_study.seeds={self.seeds!r}: give one or more distinct seeds")
        if self.test_images < 0:
            raise ValueError(f"controller_study.test_images={self.test_images} must be >= 0")

    @classmethod
    def from_dict(cls, params: dict) -> StudyConfig:
        return build(cls, params, "controller_study")


def run_controller_study(
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
    study_params: dict,
) -> list[dict]:
    """Train and test one model per (method, base LR, seed); returns one record per run."""
    study = StudyConfig.from_dict(study_params)
    model_config = resolve_model_config(
        {**model_params, "preset": study.model_preset},
        Tokenizer.from_str(tokenizer).get_vocab_size(),
        encoded_texts["input_ids"].shape[1],
        len(answer_vocab),
    )
    train_split = encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, "train")
    test_split = first_images(
        encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, "test"), study.test_images
    )
    if not len(train_split) or not len(test_split):
        raise ValueError("controller_study needs 'train' and 'test' rows in samples")
    data = {"tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest()}  # once, not per run
    cells = []
    for lr, method, seed in ((lr, m, s) for lr in study.base_lrs for m in study.methods for s in study.seeds):
        cfg = TrainConfig.from_dict(
            {**training_params, **study.training, "lr": lr, "seed": seed,
             "controller": {**study.controller, "method": method}}
        )
        cell = _run_cell(model_config, train_split, test_split, images, cfg, data)
        logger.info(
            "controller_study %-13s lr=%g seed=%d: test accuracy %.4f, %d steps in %.0f s",
            method, lr, seed, cell["test_accuracy"], cell["steps"], cell["train_seconds"],
        )
        cells.append(cell)
    return cells


def _run_cell(
    model_config: dict, train_split: EncodedSplit, test_split: EncodedSplit, images: dict, cfg: TrainConfig, data: dict
) -> dict:
    """Train one (method, base LR, seed) run as the train pipeline does (`fit_any`: the
    same initial weights for every run of a seed, `world_size` processes when set)
    and score it on the test subset."""
    tasks = TaskSet.answer_only(label_smoothing=cfg.label_smoothing)
    run_config = {"model": model_config, "training": cfg.to_dict(), "data": data}
    start = time.perf_counter()
    weights, state, history = fit_any(model_config, {"train": train_split}, images, cfg, run_config, tasks)
    seconds = time.perf_counter() - start
    model = build_model(ModelConfig.from_dict(model_config))
    model.load_state_dict(weights)
    result = evaluate(model, test_split, image_store(images), cfg, tasks)
    return {
        "method": cfg.controller.method,
        "base_lr": cfg.lr,
        "seed": cfg.seed,
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_loss": state.history[-1]["train_loss"],  # mean over the (last) epoch's steps
        "steps": state.step,
        "train_seconds": seconds,
        "test_questions": len(test_split),
        "curves": {
            "step_loss": [{"step": r["step"], "value": r["loss"]} for r in state.step_log],
            "lr": [{"step": r["step"], "value": r["lr"]} for r in state.step_log],
            **history,
        },
        # the adapter's last decision: controller/lr_scale/<group> -> lr_scale/<group>
        "final_scales": {
            k.removeprefix("controller/"): points[-1]["value"] for k, points in history.items() if "_scale/" in k
        },
        "training": cfg.to_dict(),
    }


def summarise_controller_study(cells: list[dict]) -> tuple[pd.DataFrame, plt.Figure, dict, dict]:
    """The results table (one row per (method, base LR): means over the seeds, their
    spread and each seed's accuracy), test accuracy vs base LR per method, one MLflow
    run per (method, base LR, seed), and the verdict on the goal (`study_verdict`)."""
    runs = pd.DataFrame(
        [
            {
                **{k: c[k] for k in ("method", "base_lr", "seed", "test_accuracy", "test_loss", "train_loss",
                                     "steps", "train_seconds", "test_questions")},
                **{f"final_{k.replace('/', '_')}": v for k, v in sorted(c["final_scales"].items())},
            }
            for c in cells
        ]
    )
    keys = ["method", "base_lr"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped.mean(numeric_only=True).drop(columns="seed")
    accuracy = grouped["test_accuracy"]
    table.insert(1, "test_accuracy_std", accuracy.std(ddof=1).fillna(0.0))
    table.insert(2, "test_accuracy_min", accuracy.min())
    table.insert(3, "test_accuracy_max", accuracy.max())
    table.insert(4, "seeds", accuracy.size())
    per_seed = runs.pivot_table(index=keys, columns="seed", values="test_accuracy", sort=False)
    table = table.join(per_seed.rename(columns=lambda s: f"test_accuracy_seed{s}"))
    table = table.reset_index()
    table[["steps", "test_questions"]] = table[["steps", "test_questions"]].astype(int)
    verdict = study_verdict(table)
    if verdict["best_fixed"] is None:
        logger.warning("controller_study: no 'fixed' cells in controller_study.methods, so no verdict on the goal")
    for method, v in verdict["methods"].items():
        logger.info(
            "controller_study %s: worst cell %.4f (lr %g), %+.4f +- %.4f against the best fixed cell %.4f: %s",
            method, v["worst_test_accuracy"], v["worst_base_lr"], v["gap_to_best_fixed"], v["gap_standard_error"],
            verdict["best_fixed"]["test_accuracy"], "meets the goal" if v["meets_goal"] else "misses the goal",
        )
    return table, accuracy_figure(table), {
        f"{c['method']}_lr{c['base_lr']:g}_seed{c['seed']}": {
            "tags": {"study": "controller_study", "method": c["method"], "base_lr": c["base_lr"], "seed": c["seed"]},
            "params": {"method": c["method"], "base_lr": c["base_lr"], "seed": c["seed"], "steps": c["steps"],
                       **{f"controller.{k}": v for k, v in c["training"]["controller"].items()}},
            "metrics": {
                **{k: [{"step": c["steps"], "value": c[k]}] for k in ("test_accuracy", "test_loss", "train_loss")},
                **c["curves"],
            },
        }
        for c in cells
    }, verdict


GOAL_TOLERANCE = 0.01  # the goal: an adaptive method's worst cell within 1 point of the best fixed cell


def study_verdict(table: pd.DataFrame, tolerance: float = GOAL_TOLERANCE) -> dict:
    """Each adaptive method's worst cell against the fixed schedule's best cell, with
    the standard error of that gap (the cells' seed means, se = std / sqrt(seeds)),
    and the noise of one run (the within-cell std, pooled over the cells). Both cells
    are picked by their means (a minimum and a maximum), so the gap is biased against
    the method by about a standard error: the errors say how far to trust it."""

    def cell(row: pd.Series) -> dict:
        se = float(row["test_accuracy_std"]) / float(row["seeds"]) ** 0.5
        return {"base_lr": float(row["base_lr"]), "test_accuracy": float(row["test_accuracy"]), "standard_error": se}

    fixed = table[table["method"] == "fixed"]
    # A study without `fixed` cells still saves its table; it has nothing to compare with.
    best = cell(fixed.loc[fixed["test_accuracy"].idxmax()]) if len(fixed) else None
    multi = table[table["seeds"] > 1]
    noise = float((multi["test_accuracy_std"] ** 2).mean() ** 0.5) if len(multi) else None  # one seed: unknown
    methods = {}
    for method, group in table[table["method"] != "fixed"].groupby("method", sort=False):
        if best is None:
            break
        worst = cell(group.loc[group["test_accuracy"].idxmin()])
        gap = worst["test_accuracy"] - best["test_accuracy"]
        methods[method] = {
            "worst_base_lr": worst["base_lr"],
            "worst_test_accuracy": worst["test_accuracy"],
            "gap_to_best_fixed": gap,
            "gap_standard_error": (worst["standard_error"] ** 2 + best["standard_error"] ** 2) ** 0.5,
            "meets_goal": bool(gap >= -tolerance),
        }
    return {
        "tolerance": tolerance,
        "seeds": int(table["seeds"].max()),
        "run_noise_std": noise,
        "best_fixed": best,
        "methods": methods,
    }


def accuracy_figure(table: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in table.groupby("method", sort=False):
        group = group.sort_values("base_lr")
        spread = [group["test_accuracy"] - group["test_accuracy_min"], group["test_accuracy_max"] - group["test_accuracy"]]
        ax.errorbar(group["base_lr"], group["test_accuracy"], yerr=spread, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("test accuracy")
    steps = int(table["steps"].max()) if len(table) else 0
    seeds = int(table["seeds"].max()) if len(table) else 0
    ax.set_title(f"Controller study: test accuracy after {steps} steps\n(mean, min-max over {seeds} seed(s))")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
