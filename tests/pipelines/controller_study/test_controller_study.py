import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import run_pipeline, training_inputs
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from multimodal_doubleloop.io import JSONFolderDataset
from multimodal_doubleloop.pipelines import controller_study, training
from multimodal_doubleloop.pipelines.controller_study.nodes import (
    question_only_baseline,
    study_verdict,
)
from multimodal_doubleloop.pipelines.training.nodes import plot_controller_decisions


def _study_run(samples, images, tokenized, model_params, training_params, tasks_params, folder, **study):
    study = {
        "base_lrs": [1e-4, 1e-2],
        "methods": ["fixed", "calibrated", "double_loop", "prodigy"],
        "training": {"max_steps": 4, "warmup_steps": 1, "images_per_batch": 4, "checkpoint_every": 0,
                     "resume": False, "log_every": 1, "eval_every": 2, "eval_images": 3},
        "controller": {"every": 2, "measure_every": 1, "meta_lr": 0.05, "target_update_ratio": 0.01},
        "test_images": 6,
        "seeds": [0, 1],
        "target_accuracy": 0.2,
        **study,
    }
    inputs = training_inputs(samples, images, tokenized, model_params, training_params,
                             **{"params:controller_study": study, "params:tasks": tasks_params})
    cells = {name: JSONFolderDataset(str(folder)) for name in ("controller_study_done", "controller_study_cells")}
    return run_pipeline(controller_study.create_pipeline(), inputs, cells)


def test_controller_study_trains_pairs_and_judges_every_cell(
    samples, images, tokenized, model_params, training_params, tasks_params, tmp_path
):
    pytest.importorskip("prodigyopt")
    catalog = _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path)
    methods = ["fixed", "calibrated", "double_loop", "prodigy"]
    table = catalog.load("controller_study_table")
    assert list(table[["method", "base_lr"]].itertuples(index=False, name=None)) == [
        (m, lr) for lr in (1e-4, 1e-2) for m in methods
    ]
    assert table["test_accuracy"].between(0, 1).all() and (table["steps"] == 4).all() and (table["seeds"] == 2).all()
    per_seed = table[["test_accuracy_seed0", "test_accuracy_seed1"]]
    assert table["test_accuracy"].tolist() == pytest.approx(per_seed.mean(axis=1).tolist())
    cells = catalog.load("controller_study_cells")  # one JSON per cell, on disk
    assert set(cells) == {f"{m}_lr{lr:g}_seed{s}" for m in methods for lr in (1e-4, 1e-2) for s in (0, 1)}
    assert len(list(tmp_path.glob("*.json"))) == 16
    for cell in cells.values():  # time to target from the validation checks every 2 steps
        checks = [p["step"] for p in cell["curves"]["val_accuracy"]]
        assert checks == [2, 4]
        reached = [p["step"] for p in cell["curves"]["val_accuracy"] if p["value"] >= 0.2]
        assert cell["censored"] == (not reached) and cell["steps_to_target"] == (reached[0] if reached else 4)
    # Prodigy's LR is a multiplier on its estimate: base LR 1e-2 runs it at 10x
    assert cells["prodigy_lr0.01_seed0"]["training"]["lr"] == pytest.approx(10.0)
    assert cells["prodigy_lr0.01_seed0"]["training"]["optimizer"] == "prodigy"
    # paired seeds: every method starts from the same weights and batches at one seed
    first = {(c["method"], c["seed"]): c["curves"]["step_loss"][0] for c in cells.values() if c["base_lr"] == 1e-2}
    for seed in (0, 1):
        assert first["fixed", seed] == first["calibrated", seed] == first["double_loop", seed]
    assert first["fixed", 0] != first["fixed", 1]
    baseline = catalog.load("controller_study_baseline")
    assert 0 < baseline["question_only_accuracy"] <= 1
    verdict = catalog.load("controller_study_verdict")
    assert verdict["question_only_baseline"] == baseline["question_only_accuracy"]
    fixed = table[table["method"] == "fixed"]
    assert verdict["best_fixed"]["test_accuracy"] == pytest.approx(fixed["test_accuracy"].max())
    loop = verdict["methods"]["double_loop"]
    assert loop["pairs"] == 2 and set(verdict["goal"]) == {
        "within_1_point_of_best_fixed", "at_least_every_peer_worst", "time_to_target_within_1_5x"}
    assert set(verdict["double_loop_vs_calibrated"]["per_base_lr"]) == {"0.0001", "0.01"}
    runs = catalog.load("controller_study_runs")
    assert set(runs) == set(cells)
    assert runs["double_loop_lr0.01_seed1"]["tags"] == {
        "study": "controller_study", "method": "double_loop", "base_lr": 1e-2, "seed": 1}

    # A rerun skips what is done; a new part trains only its own cells, and the summary merges all.
    again = _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path)
    assert again.load("controller_study_part")["trained"] == [] and again.load("controller_study_runs") == {}
    assert len(again.load("controller_study_table")) == 8
    part = _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path,
                      methods="fixed+hypergradient")
    assert part.load("controller_study_part")["trained"] == sorted(
        f"hypergradient_lr{lr:g}_seed{s}" for lr in (1e-4, 1e-2) for s in (0, 1))
    assert set(part.load("controller_study_table")["method"]) == {*methods, "hypergradient"}
    # Other settings are another study: its cells train anew and the old ones are left out.
    other = _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path,
                       methods=["fixed"], test_images=4)
    assert len(other.load("controller_study_part")["trained"]) == 4
    assert set(other.load("controller_study_table")["method"]) == {"fixed"}


def test_study_verdict_pairs_seeds():
    rows = []
    for seed, noise in enumerate([0.0, 0.02, -0.02]):
        for method, lr, acc, steps in [
            ("fixed", 1e-4, 0.80, 400), ("fixed", 1e-3, 0.96, 200), ("double_loop", 1e-4, 0.955, 280),
            ("double_loop", 1e-3, 0.97, 150), ("calibrated", 1e-4, 0.95, 300), ("calibrated", 1e-3, 0.96, 150),
            ("prodigy", 1e-4, 0.90, 400), ("prodigy", 1e-3, 0.94, 250), ("schedulefree", 1e-4, 0.93, 300),
            ("schedulefree", 1e-3, 0.97, 200), ("dadapt_adam", 1e-4, 0.85, 400), ("dadapt_adam", 1e-3, 0.86, 400),
            ("mechanic", 1e-4, 0.87, 400), ("mechanic", 1e-3, 0.88, 400),
        ]:
            rows.append({"method": method, "base_lr": lr, "seed": seed, "test_accuracy": acc + noise,
                         "steps_to_target": steps, "censored": method == "prodigy" and lr == 1e-4})
    verdict = study_verdict(pd.DataFrame(rows), {"question_only_accuracy": 0.67})
    assert verdict["best_fixed"]["base_lr"] == 1e-3
    loop = verdict["methods"]["double_loop"]
    # the seed noise is shared by both cells of a pair: the paired gap has no spread
    assert loop["worst_base_lr"] == 1e-4 and loop["paired_gap_to_best_fixed"] == pytest.approx(-0.005)
    assert loop["paired_gap_standard_error"] == pytest.approx(0.0, abs=1e-12) and loop["pairs"] == 3
    assert loop["time_to_target_ratio"] == pytest.approx(1.4)
    assert verdict["goal"] == {"within_1_point_of_best_fixed": True, "at_least_every_peer_worst": True,
                               "time_to_target_within_1_5x": True}
    assert verdict["methods"]["prodigy"]["time_to_target_censored"]
    assert verdict["goal_by_outer_loop"]["calibrated"]["at_least_every_peer_worst"] is True  # 0.95 >= 0.93
    assert verdict["methods"]["schedulefree"]["cells"] == 6 and verdict["methods"]["schedulefree"]["grid_complete"]
    # Peers part-way through their grid: the goal is decided where their cells so far already
    # bound their worst below the loop's, and undecided (None) where they do not.
    def without(method, lr, seed):
        return pd.DataFrame([r for r in rows if (r["method"], r["base_lr"], r["seed"]) != (method, lr, seed)])

    bounded = study_verdict(without("schedulefree", 1e-3, 2))  # 1e-4 complete: worst <= 0.93
    assert bounded["methods"]["schedulefree"]["grid_complete"] is False
    assert bounded["methods"]["schedulefree"]["worst_upper_bound"] == pytest.approx(0.93)
    assert bounded["goal"]["at_least_every_peer_worst"] is True
    open_ = study_verdict(without("schedulefree", 1e-4, 2))  # only 1e-3 complete: worst <= 0.97, above 0.955
    assert open_["methods"]["schedulefree"]["worst_upper_bound"] == pytest.approx(0.97)
    assert open_["goal"]["at_least_every_peer_worst"] is None
    no_peer = study_verdict(pd.DataFrame([r for r in rows if r["method"] != "mechanic"]))
    assert no_peer["goal"]["at_least_every_peer_worst"] is None  # a peer not run at all decides nothing
    loop_short = study_verdict(without("double_loop", 1e-4, 2))
    assert loop_short["goal"]["at_least_every_peer_worst"] is None  # the loop's own worst may still drop
    beaten = study_verdict(pd.DataFrame([{**r, "test_accuracy": 0.99} if r["method"] == "mechanic" else r
                                         for r in rows]))
    assert beaten["goal"]["at_least_every_peer_worst"] is False
    # one peer complete and better than the loop decides False, whatever the others lack
    beaten_early = study_verdict(pd.DataFrame([{**r, "test_accuracy": 0.99} if r["method"] == "mechanic" else r
                                               for r in rows if (r["method"], r["seed"]) != ("prodigy", 2)]))
    assert beaten_early["goal"]["at_least_every_peer_worst"] is False
    assert verdict["double_loop_vs_calibrated"]["mean_gap"] == pytest.approx((0.005 + 0.01) / 2)
    assert verdict["lowest_cell_above_baseline"] == pytest.approx(0.80 - 0.67)
    alone = study_verdict(pd.DataFrame([r for r in rows if r["method"] != "fixed"]))
    assert alone["best_fixed"] is None and alone["methods"] == {}
    # calibrated not yet run at one of the double loop's LRs: that pair is null, not NaN
    part = study_verdict(pd.DataFrame(
        rows + [{**r, "base_lr": 1e-2} for r in rows if r["method"] == "double_loop"]))
    assert part["double_loop_vs_calibrated"]["per_base_lr"]["0.01"] == {"mean": None, "standard_error": None, "pairs": 0}
    assert part["double_loop_vs_calibrated"]["mean_gap"] == pytest.approx((0.005 + 0.01) / 2)
    json.dumps(part, allow_nan=False)  # strict JSON: jq, browsers and MLflow's UI read it


def test_question_only_baseline_answers_from_the_question_string():
    samples = pd.DataFrame({
        "split": ["train"] * 5 + ["test"] * 4,
        "image_id": ["a", "a", "b", "c", "c", "t1", "t1", "t2", "t3"],
        "text": ["is it red?", "what shape?", "is it red?", "is it red?", "what shape?",
                 "is it red?", "what shape?", "what shape?", "never seen?"],
        "answer": ["yes", "circle", "no", "yes", "circle", "yes", "square", "circle", "yes"],
    })
    baseline = question_only_baseline(samples, {"test_images": 2})
    assert baseline["question_only_accuracy"] == pytest.approx(2 / 3)  # t1: yes (right), circle (wrong); t2: right
    assert baseline["question_only_accuracy_full_test"] == pytest.approx(3 / 4)  # unseen: commonest answer, yes


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
    project = Path(__file__).resolve().parents[3]
    shutil.copytree(project / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(project / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    study = {
        "base_lrs": [1e-3, 1e-2],
        "methods": ["fixed", "hypergradient", "double_loop"],
        "training": {"max_steps": 4, "warmup_steps": 1, "images_per_batch": 4, "eval_every": 2, "eval_images": 4},
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
        assert set(verdict["methods"]) == {"hypergradient", "double_loop"} and verdict["seeds"] == 1
        assert verdict["question_only_baseline"] > 0  # the bar, computed by the pipeline
        assert len(list((tmp_path / "data/07_model_output/controller_study_cells").glob("*.json"))) == 6
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


def test_a_cell_recorded_before_a_housekeeping_key_existed_is_still_done():
    """Cells are hours of CPU: a new checkpoint or logging key must not orphan them, while
    any setting that can change the result does."""
    from multimodal_doubleloop.pipelines.controller_study.nodes import is_done
    from multimodal_doubleloop.training.config import TrainConfig

    cfg = TrainConfig.from_dict({"lr": 1e-3, "epochs": 5, "controller": {"method": "double_loop"}})
    record = {"study_digest": "s", "training": {k: v for k, v in cfg.to_dict().items() if k != "keep_configs"}}
    record["training"]["log_every"] = 999
    assert is_done(record, "s", cfg)
    assert not is_done(record, "other study", cfg)
    assert not is_done({**record, "training": {**record["training"], "lr": 1e-2}}, "s", cfg)
    assert not is_done({**record, "training": {**record["training"], "epochs": 4}}, "s", cfg)


def test_a_diverged_cell_is_recorded_and_the_study_goes_on(
    samples, images, tokenized, model_params, training_params, tasks_params, tmp_path, monkeypatch
):
    """A cell the non-finite guard stops (Prodigy at its recommended LR did, on the real
    study) is a result: accuracy 0, censored, the reason kept; the other cells train."""
    from multimodal_doubleloop.pipelines.controller_study import nodes
    from multimodal_doubleloop.training.state import NonFiniteLossError

    real = nodes.fit_any

    def fit(model_config, splits, images, cfg, *rest):
        if cfg.lr == pytest.approx(1e-2):
            raise NonFiniteLossError("22 consecutive non-finite steps ending at step 139")
        return real(model_config, splits, images, cfg, *rest)

    monkeypatch.setattr(nodes, "fit_any", fit)
    catalog = _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path,
                         methods=["fixed"])
    cells = catalog.load("controller_study_cells")
    assert set(cells) == {f"fixed_lr{lr:g}_seed{s}" for lr in (1e-4, 1e-2) for s in (0, 1)}
    bad = cells["fixed_lr0.01_seed0"]
    assert bad["test_accuracy"] == 0.0 and bad["censored"] and "non-finite" in bad["diverged"]
    assert "diverged" not in cells["fixed_lr0.0001_seed0"]
    verdict = catalog.load("controller_study_verdict")
    assert verdict["best_fixed"]["base_lr"] == pytest.approx(1e-4)
    assert bad["test_loss"] is None and "test_loss" not in catalog.load("controller_study_runs")["fixed_lr0.01_seed0"]["metrics"]


def test_every_cell_starts_from_untouched_tasks(
    samples, images, tokenized, model_params, training_params, tasks_params, tmp_path, monkeypatch
):
    """Training updates the tasks' learned loss weights in place. On the real study each
    cell got the weights the previous cell of its part left, so a cell after a diverged
    one started at a weighted loss of ~42 instead of ~3.3 and calibrated to 70x instead
    of 0.1x: cells must not depend on the order they run in."""
    from multimodal_doubleloop.pipelines.controller_study import nodes

    real, seen = nodes.fit_any, []

    def fit(model_config, splits, images, cfg, run_config, tasks, *rest):
        seen.append(tasks)
        assert not hasattr(tasks, "trained_by"), f"cell lr={cfg.lr} got tasks trained by {tasks.trained_by}"
        result = real(model_config, splits, images, cfg, run_config, tasks, *rest)
        tasks.trained_by = cfg.lr  # what training in place leaves behind
        return result

    monkeypatch.setattr(nodes, "fit_any", fit)
    _study_run(samples, images, tokenized, model_params, training_params, tasks_params, tmp_path,
               methods=["fixed"], seeds=[0])
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_a_part_selects_learning_rates_and_seeds_on_the_command_line():
    """`--params controller_study.base_lrs=0.01+0.001,controller_study.seeds=0+1`: kedro
    splits --params on commas, so lists come as "+"-joined strings (or one number)."""
    from multimodal_doubleloop.pipelines.controller_study.nodes import StudyConfig

    study = StudyConfig(base_lrs="0.01+0.001", seeds="0+1", methods="fixed+double_loop")
    assert study.base_lrs == [0.01, 0.001] and study.seeds == [0, 1]
    assert StudyConfig(base_lrs=0.01, seeds=1).base_lrs == [0.01]
    assert StudyConfig(base_lrs=["1e-5", 1e-4]).base_lrs == [1e-5, 1e-4]  # YAML reads 1e-5 as a string
    with pytest.raises(ValueError, match="base_lrs=.*give numbers"):
        StudyConfig(base_lrs="0.01+fast")
