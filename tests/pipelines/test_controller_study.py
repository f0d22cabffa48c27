import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import pytest
from conftest import run_pipeline, training_inputs
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from multimodal_doubleloop.pipelines import controller_study, training
from multimodal_doubleloop.pipelines.controller_study.nodes import StudyConfig, study_verdict
from multimodal_doubleloop.pipelines.training.nodes import plot_controller_decisions


def test_controller_study_on_memory_catalog(samples, images, tokenized, model_params, training_params):
    study = {
        "base_lrs": [1e-4, 1e-2],
        "methods": ["fixed", "hypergradient", "double_loop"],
        "model_preset": "tiny",
        "training": {"max_steps": 4, "warmup_steps": 1, "images_per_batch": 4, "checkpoint_every": 0,
                     "resume": False, "log_every": 1},
        "controller": {"every": 2, "measure_every": 1, "meta_lr": 0.05},
        "test_images": 6,
        "seeds": [0, 1],
    }
    inputs = training_inputs(samples, images, tokenized, model_params, training_params,
                     **{"params:controller_study": study})
    catalog = run_pipeline(controller_study.create_pipeline(), inputs)
    table = catalog.load("controller_study_table")
    assert list(table[["method", "base_lr"]].itertuples(index=False, name=None)) == [
        (m, lr) for lr in (1e-4, 1e-2) for m in ("fixed", "hypergradient", "double_loop")
    ]
    assert table["test_accuracy"].between(0, 1).all() and (table["steps"] == 4).all()
    # One row per cell: the mean over its seeds, beside each seed's accuracy.
    assert (table["seeds"] == 2).all()
    per_seed = table[["test_accuracy_seed0", "test_accuracy_seed1"]]
    assert table["test_accuracy"].tolist() == pytest.approx(per_seed.mean(axis=1).tolist())
    assert (table["test_accuracy_min"] == per_seed.min(axis=1)).all()
    assert table["test_questions"].nunique() == 1 and table["test_questions"].iloc[0] < 100
    assert isinstance(catalog.load("controller_study_plot"), plt.Figure)
    verdict = catalog.load("controller_study_verdict")
    fixed = table[table["method"] == "fixed"]
    assert verdict["best_fixed"]["test_accuracy"] == pytest.approx(fixed["test_accuracy"].max())
    for method in ("hypergradient", "double_loop"):
        worst = table.loc[table["method"] == method, "test_accuracy"].min()
        assert verdict["methods"][method]["gap_to_best_fixed"] == pytest.approx(worst - fixed["test_accuracy"].max())
    runs = catalog.load("controller_study_runs")
    assert set(runs) == {
        f"{m}_lr{lr:g}_seed{s}" for lr in (1e-4, 1e-2) for m in ("fixed", "hypergradient", "double_loop") for s in (0, 1)
    }
    adaptive = runs["double_loop_lr0.01_seed1"]
    assert adaptive["tags"] == {"study": "controller_study", "method": "double_loop", "base_lr": 1e-2, "seed": 1}
    assert [p["step"] for p in adaptive["metrics"]["controller/lr_scale/heads"]] == [2]
    assert not any(k.startswith("controller/") for k in runs["fixed_lr0.01_seed0"]["metrics"])
    # Same seed, same data: the fixed and adaptive cells agree until the first decision;
    # another seed trains on other batches from other weights.
    cells = catalog.load("controller_study_cells")
    losses = {(c["method"], c["seed"]): c["curves"]["step_loss"] for c in cells if c["base_lr"] == 1e-2}
    for seed in (0, 1):
        assert losses["fixed", seed][:2] == losses["hypergradient", seed][:2] == losses["double_loop", seed][:2]
    assert losses["fixed", 0][0] != losses["fixed", 1][0]


def test_study_verdict_compares_worst_adaptive_cell_with_best_fixed_cell():
    table = pd.DataFrame(
        {
            "method": ["fixed", "fixed", "double_loop", "double_loop", "hypergradient", "hypergradient"],
            "base_lr": [1e-4, 1e-3, 1e-4, 1e-3, 1e-4, 1e-3],
            "test_accuracy": [0.60, 0.73, 0.725, 0.75, 0.70, 0.74],
            "test_accuracy_std": [0.01, 0.03, 0.04, 0.02, 0.0, 0.0],
            "seeds": [4, 4, 4, 4, 4, 4],
        }
    )
    verdict = study_verdict(table)
    assert verdict["best_fixed"] == {"base_lr": 1e-3, "test_accuracy": 0.73, "standard_error": pytest.approx(0.015)}
    loop, hyper = verdict["methods"]["double_loop"], verdict["methods"]["hypergradient"]
    assert loop["worst_base_lr"] == 1e-4 and loop["gap_to_best_fixed"] == pytest.approx(-0.005)
    assert loop["gap_standard_error"] == pytest.approx((0.02**2 + 0.015**2) ** 0.5)
    assert loop["meets_goal"] and not hyper["meets_goal"]  # -0.5 point passes, -3 points does not
    assert verdict["run_noise_std"] == pytest.approx(((0.01**2 + 0.03**2 + 0.04**2 + 0.02**2) / 6) ** 0.5)
    # Without fixed cells (a study of one method) there is nothing to compare with.
    alone = study_verdict(table[table["method"] != "fixed"])
    assert alone["best_fixed"] is None and alone["methods"] == {}


def test_study_config_fails_loudly():
    with pytest.raises(ValueError, match="use a subset of"):
        StudyConfig(methods=["fixed", "adam"])
    with pytest.raises(ValueError, match=r"sets \['lr'\]"):
        StudyConfig(training={"lr": 1e-3})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['base_lr'\]"):
        StudyConfig.from_dict({"base_lr": [1e-3]})
    with pytest.raises(ValueError, match=r"sets \['seed'\]"):
        StudyConfig(training={"seed": 3})
    with pytest.raises(ValueError, match="distinct seeds"):
        StudyConfig(seeds=[1, 1])


def test_training_pipeline_reports_controller_decisions(
    samples, images, tokenized, model_params, training_params, tasks_params
):
    params = {**training_params, "max_steps": 6, "checkpoint_every": 0,
              "controller": {"method": "double_loop", "every": 2, "measure_every": 2}}
    inputs = training_inputs(samples, images, tokenized, model_params, params, **{"params:tasks": tasks_params})
    catalog = run_pipeline(training.create_pipeline(), inputs)
    curves = catalog.load("training_curves")
    assert [p["step"] for p in curves["controller/lr_scale/vision"]] == [2, 4]
    assert all(0.25 <= p["value"] <= 4 for p in curves["controller/wd_scale/text"])
    figure = catalog.load("controller_decisions_plot")
    assert [ax.get_legend() is not None for ax in figure.axes] == [True, True]


def test_decisions_plot_accepts_one_point_histories_and_no_controller():
    figure = plot_controller_decisions({"controller/lr_scale/heads": {"step": 4, "value": 2.0}, "lr": []})
    assert figure.axes[0].get_legend() is not None
    off = plot_controller_decisions({"train_loss": [{"step": 0, "value": 1.0}]})
    assert "controller off" in off.axes[0].texts[0].get_text()


@pytest.mark.slow
def test_kedro_run_controller_study_logs_one_nested_run_per_cell(tmp_path, monkeypatch):
    """`kedro run --pipeline=controller_study --env test` on a slice of real easy-VQA,
    in a copy of the project's conf with its own MLflow store."""
    project = Path(__file__).resolve().parents[2]
    shutil.copytree(project / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(project / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    study = {
        "base_lrs": [1e-3, 1e-2],
        "model_preset": "tiny",
        "training": {"max_steps": 4, "warmup_steps": 1, "images_per_batch": 4},
        "controller": {"every": 2, "measure_every": 1},
        "test_images": 4,
        "seeds": [0],
    }
    try:
        with KedroSession.create(tmp_path, env="test", runtime_params={"controller_study": study}) as session:
            session.run(pipeline_name="controller_study")
        table = pd.read_csv(tmp_path / "data/08_reporting/controller_study.csv")
        assert len(table) == 6 and {"method", "base_lr", "test_accuracy"} <= set(table.columns)
        assert (tmp_path / "data/08_reporting/controller_study.png").stat().st_size > 1000
        verdict = json.loads((tmp_path / "data/08_reporting/controller_study_verdict.json").read_text())
        assert set(verdict["methods"]) == {"hypergradient", "double_loop"} and verdict["run_noise_std"] is None
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
        assert len(parent) == 1 and len(cells) == 6
        assert {(r.data.tags["method"], float(r.data.tags["base_lr"])) for r in cells} == set(
            zip(table["method"], table["base_lr"], strict=True)
        )
        by_name = {r.info.run_name: r for r in cells}
        assert by_name["double_loop_lr0.01_seed0"].data.metrics["test_accuracy"] == pytest.approx(
            table.set_index(["method", "base_lr"]).loc[("double_loop", 0.01), "test_accuracy"]
        )
        history = mlflow.MlflowClient().get_metric_history(
            by_name["hypergradient_lr0.001_seed0"].info.run_id, "controller/lr_scale/heads"
        )
        # the shipped calibration at the first measured step, then the window end
        assert [m.step for m in history] == [1, 2]
    finally:
        mlflow.end_run()
