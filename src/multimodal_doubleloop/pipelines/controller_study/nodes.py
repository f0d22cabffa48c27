"""Controller study nodes: train every (method, base LR, seed) cell, then tabulate,
plot and judge.

A row (method) is an outer loop on AdamW (`fixed`, `calibrated`, `hypergradient`,
`double_loop`) or a learning-rate-free peer (`prodigy`, `schedulefree`,
`dadapt_adam`, `mechanic`: the real packages of the `study` extra). Every cell trains
what `kedro run --pipeline=train` trains (the same tasks, data and model, through
`fit_any`), for the study's budget. Seeds are paired: at one seed every cell starts
from the same weights and sees the same batches; only the method and the base LR
differ. For Prodigy, D-Adaptation and Mechanic the LR is a multiplier on their own
estimate: base LR `lr` runs them at `lr / reference_lr` (1e-3 -> 1.0, their
recommendation), the same three decades around it.

Each cell is scored on the first `test_images` test images (final accuracy and loss)
and, every `training.eval_every` steps, on the first `training.eval_images`
validation images: its time to target is the first step whose validation accuracy
reaches `target_accuracy` (censored at the budget when it never does). Cells are
written one by one as they finish (`controller_study_cells`, one JSON per cell), so
the study can run in parts (`--params controller_study.methods=...`): a rerun skips
the cells already done with the same settings, and the summary merges every cell on
disk that belongs to the current study.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: figures are only saved
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ...config import build  # noqa: E402
from ...data.batching import first_images  # noqa: E402
from ...data.images import image_store  # noqa: E402
from ...models import ModelConfig, build_model  # noqa: E402
from ...training.checkpoint import RESUMABLE_DIFFERENCES, without_added_defaults  # noqa: E402
from ...training.config import TrainConfig  # noqa: E402
from ...training.evaluate import evaluate  # noqa: E402
from ...training.fit import fit_any  # noqa: E402
from ...training.state import NonFiniteLossError  # noqa: E402
from ..training.nodes import Prepared, prepare_training  # noqa: E402

logger = logging.getLogger(__name__)

# Study row -> (training.optimizer, training.controller.method, LR is a multiplier on
# the method's own step-size estimate).
METHODS = {
    "fixed": ("adamw", "fixed", False),
    "calibrated": ("adamw", "calibrated", False),
    "hypergradient": ("adamw", "hypergradient", False),
    "double_loop": ("adamw", "double_loop", False),
    "prodigy": ("prodigy", "fixed", True),
    "schedulefree": ("schedulefree_adamw", "fixed", False),
    "dadapt_adam": ("dadapt_adam", "fixed", True),
    "mechanic": ("mechanic_adamw", "fixed", True),
}
OUTER_LOOPS = ("calibrated", "hypergradient", "double_loop")  # adaptive rows on AdamW
PEERS = ("prodigy", "schedulefree", "dadapt_adam", "mechanic")
GOAL_TOLERANCE = 0.01  # the double loop's worst cell within 1 point of the best fixed cell
GOAL_TIME_RATIO = 1.5  # ... and at most 1.5x its steps to the target


def _plus_list(value, kind, key: str) -> list:
    """A list from a YAML list, one value, or "a+b+c": kedro splits --params on commas, so
    `--params controller_study.methods=fixed+double_loop,controller_study.base_lrs=0.01+0.001`."""
    if isinstance(value, str):
        value = [v.strip() for v in value.replace(",", "+").strip("[]").split("+") if v.strip()]
    elif not isinstance(value, list | tuple):
        value = [value]
    try:
        return [kind(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"controller_study.{key}={value!r}: give numbers, e.g. {key}=0.01+0.001") from exc


@dataclass
class StudyConfig:
    base_lrs: list[float] | str | float = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    methods: list[str] | str = field(default_factory=lambda: list(METHODS))
    training: dict = field(default_factory=dict)  # overrides of params:training in every cell
    controller: dict = field(default_factory=dict)  # training.controller of the outer-loop rows
    test_images: int = 0  # score on the first N test images (all their questions); 0 = all
    seeds: list[int] | str | int = field(default_factory=lambda: [0])  # training.seed of each run of a cell
    target_accuracy: float = 0.95  # time to target: steps until validation accuracy reaches it
    reference_lr: float = 1e-3  # base LR at which LR-multiplier methods run at 1.0

    def __post_init__(self):
        self.methods = _plus_list(self.methods, str, "methods")
        self.base_lrs = _plus_list(self.base_lrs, float, "base_lrs")
        self.seeds = _plus_list(self.seeds, int, "seeds")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"controller_study.methods={self.methods!r}: use a subset of {list(METHODS)}")
        if not self.base_lrs or any(lr <= 0 for lr in self.base_lrs):
            raise ValueError(f"controller_study.base_lrs={self.base_lrs!r} must be positive")
        owned = sorted({"lr", "controller", "seed", "optimizer"} & set(self.training))
        if owned:
            raise ValueError(f"controller_study.training sets {owned}; the study sets these per cell")
        if "method" in self.controller:
            raise ValueError("controller_study.controller.method is set per cell; remove it")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"controller_study.seeds={self.seeds!r}: give one or more distinct seeds")
        if self.test_images < 0 or not 0 < self.target_accuracy <= 1 or self.reference_lr <= 0:
            raise ValueError(
                f"controller_study: test_images={self.test_images} must be >= 0, target_accuracy="
                f"{self.target_accuracy} in (0, 1], reference_lr={self.reference_lr} > 0"
            )

    @classmethod
    def from_dict(cls, params: dict) -> StudyConfig:
        return build(cls, params, "controller_study")

    def cell_training(self, training_params: dict, method: str, base_lr: float, seed: int) -> dict:
        """`params:training` of one cell."""
        optimizer, controller, multiplier = METHODS[method]
        return {
            **training_params,
            **self.training,
            "optimizer": optimizer,
            "lr": base_lr / self.reference_lr if multiplier else base_lr,
            "seed": seed,
            "controller": {**(self.controller if controller != "fixed" else {}), "method": controller},
        }


def cell_name(method: str, base_lr: float, seed: int) -> str:
    return f"{method}_lr{base_lr:g}_seed{seed}"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Training keys that cannot change a cell's result (logging, checkpoint housekeeping,
# workers): a cell recorded before such a key existed, or with another value, is done.
HOUSEKEEPING = {k.removeprefix("training.") for k in RESUMABLE_DIFFERENCES} - {"epochs", "max_steps"}


def _result_settings(training: dict) -> dict:
    """A cell's training settings that can change its result, as JSON would store them."""
    kept = {k: v for k, v in training.items() if k not in HOUSEKEEPING}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def is_done(record: dict, shared: str, cfg: TrainConfig) -> bool:
    """Whether a recorded cell was trained with this study's shared settings and this
    cell's training settings (housekeeping aside; a key added since the cell ran, such
    as `freeze`, counts at its default, which is what the cell ran with)."""
    recorded = {**TrainConfig().to_dict(), **(record.get("training") or {})}
    return record.get("study_digest") == shared and _result_settings(recorded) == _result_settings(cfg.to_dict())


def question_only_baseline(samples: pd.DataFrame, study_params: dict) -> dict:
    """The bar every cell must clear: answer each test question with the commonest
    training answer to the same question string, never looking at the image (the
    commonest answer overall for a string training never saw). On the study's test
    subset (the first `test_images` test images) and on the whole test split."""
    study = StudyConfig.from_dict(study_params)
    labelled = samples[samples["answer"].fillna("").astype(str) != ""]
    train, test = labelled[labelled["split"] == "train"], labelled[labelled["split"] == "test"]
    if not len(train) or not len(test):
        raise ValueError("the question-only baseline needs labelled 'train' and 'test' rows in samples")
    majority = train.groupby("text")["answer"].agg(lambda a: a.value_counts().idxmax())
    fallback = train["answer"].value_counts().idxmax()

    def accuracy(rows: pd.DataFrame) -> float:
        return float((rows["text"].map(majority).fillna(fallback) == rows["answer"]).mean())

    images = test["image_id"].drop_duplicates()
    subset = test[test["image_id"].isin(set(images.head(study.test_images or len(images))))]
    result = {
        "question_only_accuracy": accuracy(subset),
        "question_only_accuracy_full_test": accuracy(test),
        "test_questions": len(subset),
        "distinct_train_questions": int(train["text"].nunique()),
    }
    logger.info("controller_study: question-only baseline %s", result)
    return result


def run_controller_study(
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
    tasks_params: dict | None,
    study_params: dict,
    done: dict,
) -> tuple[dict, dict]:
    """The cells of this part still to train, each a callable the catalog calls as it
    saves it (one JSON per cell, written as soon as that cell is trained), and the
    part: the study's digest and the names trained. A cell in `done` with the same
    settings is skipped."""
    study = StudyConfig.from_dict(study_params)
    prepared = prepare_training(
        samples, encoded_texts, images["image_ids"], answer_vocab, tokenizer,
        model_params, training_params, tasks_params, ("train", "val", "test"),
        augment=images.get("augment"),
    )
    test_split = first_images(prepared.splits["test"], study.test_images)
    if not len(prepared.splits["train"]) or not len(test_split):
        raise ValueError("controller_study needs 'train' and 'test' rows in samples")
    shared = study_digest(prepared, study, len(test_split))
    todo = {}
    for lr, method, seed in ((lr, m, s) for lr in study.base_lrs for m in study.methods for s in study.seeds):
        cfg = TrainConfig.from_dict(study.cell_training(training_params, method, lr, seed))
        name, digest = cell_name(method, lr, seed), _digest({"shared": shared, "training": cfg.to_dict()})
        if name in done and is_done(done[name], shared, cfg):
            continue
        if name in done:
            logger.info("controller_study: %s was trained with other settings; training it again", name)
        todo[name] = functools.partial(
            _run_cell, prepared, cfg, test_split, images, study, method, lr,
            {"digest": digest, "study_digest": shared},
        )
    skipped = len(study.base_lrs) * len(study.methods) * len(study.seeds) - len(todo)
    logger.info("controller_study: %d cell(s) to train, %d already done", len(todo), skipped)
    return todo, {"study_digest": shared, "trained": sorted(todo)}


def study_digest(prepared: Prepared, study: StudyConfig, test_questions: int) -> str:
    """What every cell of one study shares (model, tasks, data, budget, test subset)."""
    return _digest(without_added_defaults(  # settings added since the cells ran count at their defaults
        {
            "model": prepared.model_config,
            "tasks": prepared.run_config["tasks"],
            # the data's size and tokenizer, as when the committed cells were trained (the
            # sample table's fingerprint, added since, would orphan them; the study's
            # data is fixed by its own parameters: easy-VQA, the train pipeline's tasks)
            "data": {k: v for k, v in prepared.run_config["data"].items() if k != "samples_sha256"},
            "training": study.training,
            "controller": study.controller,
            "test_questions": test_questions,
            "target_accuracy": study.target_accuracy,
            "reference_lr": study.reference_lr,
            # Cells trained before each had its own copy of the tasks started from the loss
            # weights the previous cell left (order-dependent): another study, retrained.
            "cell_tasks": "own copy",
        }
    ))


def _run_cell(prepared: Prepared, cfg: TrainConfig, test_split, images: dict, study: StudyConfig,
              method: str, base_lr: float, digests: dict) -> dict:
    """Train one cell as the train pipeline would (`fit_any`) and score it: a JSON record."""
    run_config = {**prepared.run_config, "training": cfg.to_dict()}
    splits = {"train": prepared.splits["train"], "val": prepared.splits["val"]}
    # Training updates the tasks' learned loss weights in place (uncertainty weighting):
    # each cell starts from its own untouched copy, or a cell would start from the
    # weights the previous cell of the part left (after a diverged cell, a loss x10).
    tasks = copy.deepcopy(prepared.tasks)
    start = time.perf_counter()
    try:
        weights, state, history = fit_any(prepared.model_config, splits, images, cfg, run_config, tasks)
    except NonFiniteLossError as exc:  # a result of the method at this LR, not a failure of the study
        logger.warning("controller_study %s lr=%g seed=%d diverged: %s", method, base_lr, cfg.seed, exc)
        return diverged_cell(method, base_lr, cfg, len(test_split), time.perf_counter() - start, str(exc), digests)
    seconds = time.perf_counter() - start
    model = build_model(ModelConfig.from_dict(prepared.model_config))
    model.load_state_dict(weights)
    result = evaluate(model, test_split, image_store(images), cfg, tasks)
    reached = [r["step"] for r in state.val_log if r["val_accuracy"] >= study.target_accuracy]
    cell = {
        "method": method,
        "base_lr": base_lr,
        "seed": cfg.seed,
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "train_loss": state.history[-1]["train_loss"],  # mean over the (last) epoch's steps
        "steps": state.step,
        "steps_to_target": reached[0] if reached else state.step,
        "censored": not reached,  # never reached the target within the budget
        "train_seconds": seconds,
        "test_questions": len(test_split),
        "curves": {
            "step_loss": [{"step": r["step"], "value": r["loss"]} for r in state.step_log],
            "lr": [{"step": r["step"], "value": r["lr"]} for r in state.step_log],
            "val_accuracy": [{"step": r["step"], "value": r["val_accuracy"]} for r in state.val_log],
            **history,
        },
        # the adapter's last decision: controller/lr_scale/<group> -> lr_scale/<group>
        "final_scales": {
            k.removeprefix("controller/"): points[-1]["value"] for k, points in history.items() if "_scale/" in k
        },
        "training": cfg.to_dict(),
        **digests,
    }
    logger.info(
        "controller_study %-13s lr=%g seed=%d: test accuracy %.4f, target %s at step %d, %.0f s",
        method, base_lr, cfg.seed, cell["test_accuracy"], "missed" if cell["censored"] else "reached",
        cell["steps_to_target"], seconds,
    )
    return cell


def diverged_cell(method: str, base_lr: float, cfg: TrainConfig, test_questions: int, seconds: float,
                  reason: str, digests: dict) -> dict:
    """The record of a cell whose training diverged (the loop's non-finite guard stopped
    it): no answer is right (accuracy 0), the target is never reached, and the study
    goes on with its other cells."""
    return {
        "method": method, "base_lr": base_lr, "seed": cfg.seed,
        "test_accuracy": 0.0, "test_loss": None, "train_loss": None,  # null in the cell's JSON
        "steps": 0, "steps_to_target": 0, "censored": True, "diverged": reason,
        "train_seconds": seconds, "test_questions": test_questions,
        "curves": {}, "final_scales": {}, "training": cfg.to_dict(), **digests,
    }


def summarise_controller_study(
    cells: dict, part: dict, baseline: dict
) -> tuple[pd.DataFrame, plt.Figure, dict, dict]:
    """Every cell on disk of this study (same `study_digest`: model, tasks, data,
    budget), whichever part trained it, merged: the table (one row per (method, base
    LR): means over the seeds, spread, each seed), test accuracy vs base LR, one MLflow
    run per cell trained in this part, and the verdict (`study_verdict`)."""
    mine = {n: c for n, c in cells.items() if c.get("study_digest") == part["study_digest"]}
    if not mine:
        raise ValueError("controller_study: no cells of this study on disk; run its methods first")
    trained = part["trained"]
    if len(mine) < len(cells):
        logger.info("controller_study: %d cell(s) on disk belong to another study; left out", len(cells) - len(mine))
    runs = pd.DataFrame([{k: c[k] for k in RUN_COLUMNS} for c in mine.values()])
    runs[["test_loss", "train_loss"]] = runs[["test_loss", "train_loss"]].astype(float)  # a diverged cell's null: NaN
    table = study_table(runs)
    verdict = study_verdict(runs, baseline)
    for method, v in verdict["methods"].items():
        logger.info("controller_study %s: %s", method, v)
    return table, accuracy_figure(table, baseline), {n: mlflow_run(cells[n]) for n in trained if n in cells}, verdict


RUN_COLUMNS = ("method", "base_lr", "seed", "test_accuracy", "test_loss", "train_loss", "steps", "steps_to_target",
               "censored", "train_seconds", "test_questions")


def study_table(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["method", "base_lr"]
    order = {m: i for i, m in enumerate(METHODS)}
    runs = runs.sort_values(["base_lr", "method", "seed"], key=lambda s: s.map(order) if s.name == "method" else s)
    grouped = runs.groupby(keys, sort=False)
    table = grouped[["test_accuracy", "test_loss", "train_loss", "steps", "steps_to_target", "train_seconds",
                     "test_questions"]].mean()
    accuracy = grouped["test_accuracy"]
    table.insert(1, "test_accuracy_std", accuracy.std(ddof=1).fillna(0.0))
    table.insert(2, "test_accuracy_min", accuracy.min())
    table.insert(3, "test_accuracy_max", accuracy.max())
    table.insert(4, "seeds", accuracy.size())
    table["censored"] = grouped["censored"].sum().astype(int)  # seeds that never reached the target
    per_seed = runs.pivot_table(index=keys, columns="seed", values="test_accuracy", sort=False)
    table = table.join(per_seed.rename(columns=lambda s: f"test_accuracy_seed{s}")).reset_index()
    table[["steps", "test_questions"]] = table[["steps", "test_questions"]].round().astype(int)
    return table


def _paired(runs: pd.DataFrame, a: tuple, b: tuple, column: str = "test_accuracy") -> dict:
    """Mean and standard error of (cell a - cell b) over the seeds both have."""
    def cell(method, lr):
        return runs[(runs["method"] == method) & (runs["base_lr"] == lr)].set_index("seed")[column]

    diff = (cell(*a) - cell(*b)).dropna()
    n = len(diff)
    return {
        "mean": float(diff.mean()) if n else None,  # None, not NaN: the verdict is strict JSON
        "standard_error": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "pairs": n,
    }


def study_verdict(runs: pd.DataFrame, baseline: dict | None = None, tolerance: float = GOAL_TOLERANCE) -> dict:
    """Each adaptive row's worst cell (lowest mean over the seeds) against the fixed
    schedule's best cell, by paired differences (same seed: same initial weights and
    batches) with their standard errors; time to target as a ratio of mean steps; the
    double loop's worst cell against every peer's worst; and the double loop against the
    calibration alone at each base LR. The picks of worst and best cells bias the gap
    against the method by about a standard error."""
    means = runs.groupby(["method", "base_lr"])["test_accuracy"].mean()
    seeds_run = runs.groupby(["method", "base_lr"])["seed"].nunique()
    grid = (runs["base_lr"].nunique(), runs["seed"].nunique())  # the study's grid: every LR and seed on disk
    steps = runs.groupby(["method", "base_lr"])["steps_to_target"].mean()
    censored = runs.groupby(["method", "base_lr"])["censored"].any()
    floor = (baseline or {}).get("question_only_accuracy")
    verdict = {
        "tolerance": tolerance,
        "seeds": int(runs["seed"].nunique()) if len(runs) else 0,
        "question_only_baseline": floor,
        "lowest_cell_above_baseline": None if floor is None or not len(means) else float(means.min() - floor),
        "best_fixed": None,
        "methods": {},
        "goal": None,
        "goal_by_outer_loop": {},
        "double_loop_vs_calibrated": None,
    }
    if "fixed" not in means.index.get_level_values(0):
        return verdict  # nothing to compare with (a part without the fixed rows)
    best_lr = float(means["fixed"].idxmax())
    verdict["best_fixed"] = {
        "base_lr": best_lr,
        "test_accuracy": float(means["fixed", best_lr]),
        "steps_to_target": float(steps["fixed", best_lr]),
        "censored": bool(censored["fixed", best_lr]),
    }
    for method in [m for m in METHODS if m != "fixed" and m in means.index.get_level_values(0)]:
        worst_lr = float(means[method].idxmin())
        gap = _paired(runs, (method, worst_lr), ("fixed", best_lr))
        ratio = float(steps[method, worst_lr] / steps["fixed", best_lr])
        verdict["methods"][method] = {
            "worst_base_lr": worst_lr,
            "worst_test_accuracy": float(means[method, worst_lr]),
            "paired_gap_to_best_fixed": gap["mean"],
            "paired_gap_standard_error": gap["standard_error"],
            "pairs": gap["pairs"],
            "within_tolerance": bool(gap["mean"] >= -tolerance),
            "time_to_target_ratio": ratio,
            "time_to_target_censored": bool(censored[method, worst_lr]),
            "cells": int(seeds_run[method].sum()),
            "grid_complete": bool(len(seeds_run[method]) == grid[0] and (seeds_run[method] == grid[1]).all()),
            # its worst can only be this low or lower once the grid is complete: the mean of
            # an LR that every seed has run bounds the worst from above
            "worst_upper_bound": _or_none(means[method][seeds_run[method] == grid[1]].min()),
        }
    verdict["goal_by_outer_loop"] = {m: _goal(verdict["methods"], m) for m in OUTER_LOOPS if m in verdict["methods"]}
    verdict["goal"] = verdict["goal_by_outer_loop"].get("double_loop")
    if {"double_loop", "calibrated"} <= set(verdict["methods"]):
        per_lr = {f"{lr:g}": _paired(runs, ("double_loop", lr), ("calibrated", lr))
                  for lr in sorted(set(runs.loc[runs["method"] == "double_loop", "base_lr"]))}
        verdict["double_loop_vs_calibrated"] = {
            "per_base_lr": per_lr,
            "mean_gap": _mean_or_none([v["mean"] for v in per_lr.values()]),
        }
    return verdict


def _mean_or_none(values: list) -> float | None:
    """The mean of the values that exist (a base LR one row has not run yet has none)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _or_none(value) -> float | None:
    return None if pd.isna(value) else float(value)


def _at_least_every_peer_worst(loop: dict, methods: dict) -> bool | None:
    """True/False once the cells decide it, None while they do not. With the outer loop's
    grid complete, a peer's worst is at most its worst_upper_bound whatever its missing
    cells score: "at least every peer's worst" is True once the loop's worst reaches every
    peer's bound, and False once one peer with its grid complete has a better worst."""
    if not loop["grid_complete"] or not all(p in methods for p in PEERS):
        return None
    peers = [methods[p] for p in PEERS]
    if any(p["grid_complete"] and p["worst_test_accuracy"] > loop["worst_test_accuracy"] for p in peers):
        return False
    bounds = [p["worst_upper_bound"] for p in peers]
    if None not in bounds and loop["worst_test_accuracy"] >= max(bounds):
        return True
    return None


def _goal(methods: dict, method: str) -> dict:
    """The issue's three goals for one outer loop, each True/False (None: not decided by
    the cells so far)."""
    loop = methods[method]
    return {
        "within_1_point_of_best_fixed": loop["within_tolerance"],
        "at_least_every_peer_worst": _at_least_every_peer_worst(loop, methods),
        "time_to_target_within_1_5x": bool(
            loop["time_to_target_ratio"] <= GOAL_TIME_RATIO and not loop["time_to_target_censored"]
        ),
    }


def mlflow_run(cell: dict) -> dict:
    """One cell as a nested MLflow run (see `mlflow_runs.MlflowNestedRunsDataset`)."""
    return {
        "tags": {"study": "controller_study", "method": cell["method"], "base_lr": cell["base_lr"], "seed": cell["seed"]},
        "params": {"method": cell["method"], "base_lr": cell["base_lr"], "seed": cell["seed"], "steps": cell["steps"],
                   "optimizer": cell["training"]["optimizer"],
                   **{f"controller.{k}": v for k, v in cell["training"]["controller"].items()}},
        "metrics": {
            **{k: [{"step": cell["steps"], "value": float(cell[k])}]
               for k in ("test_accuracy", "test_loss", "train_loss", "steps_to_target")
               if cell[k] is not None},  # a diverged cell has no loss
            **cell["curves"],
        },
    }


def accuracy_figure(table: pd.DataFrame, baseline: dict | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, group in table.groupby("method", sort=False):
        group = group.sort_values("base_lr")
        spread = [group["test_accuracy"] - group["test_accuracy_min"], group["test_accuracy_max"] - group["test_accuracy"]]
        ax.errorbar(group["base_lr"], group["test_accuracy"], yerr=spread, marker="o", capsize=3, label=method,
                    ls="--" if method in PEERS else "-")
    if baseline:
        ax.axhline(baseline["question_only_accuracy"], color="grey", ls=":", label="question only")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate (Prodigy, D-Adaptation, Mechanic: x reference as multiplier)")
    ax.set_ylabel("test accuracy")
    steps = int(table["steps"].max()) if len(table) else 0
    seeds = int(table["seeds"].max()) if len(table) else 0
    ax.set_title(f"Controller study: test accuracy after {steps} steps\n(mean, min-max over {seeds} seed(s))")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
