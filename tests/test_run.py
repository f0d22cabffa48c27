"""One real `kedro run --pipeline=train --env test` (a KedroSession in a subprocess), with its own
MLflow sqlite store, in a copy of the project's conf so nothing touches ./data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    shutil.copytree(PROJECT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src").mkdir()  # the package itself is installed (pip install -e .)
    (tmp_path / "data").mkdir()
    return tmp_path  # kedro runs with cwd=tmp_path: the sqlite MLflow store is tmp_path/mlflow.db


def run_kedro(project: Path, pipeline: str = "train", *extra: str) -> None:
    """`kedro run --pipeline=<pipeline> --env test` in its own process: kedro-mlflow
    keeps an MLflow run active per process, which would leak into other tests' stores."""
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", f"--pipeline={pipeline}", "--env", "test", *extra],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_train_pipeline_end_to_end(project):
    run_kedro(project)
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert {"test_answer_accuracy_yes_no", "test_answer_accuracy_color", "test_answer_accuracy_shape"} <= set(metrics)
    # the default task set: answer (primary: test_accuracy is its accuracy) + attributes
    assert metrics["test_answer_accuracy"] == metrics["test_accuracy"]
    assert 0.0 <= metrics["test_attributes_map"] <= 1.0
    assert (project / "data/08_reporting/confusion_matrix.png").stat().st_size > 1000
    versions = list((project / "data/06_models/model.pt").iterdir())
    assert len(versions) == 1 and (versions[0] / "model.pt").exists()
    assert list((project / "data/06_models/tokenizer.json").glob("*/tokenizer.json"))

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.params["training.lr"] == "0.001"  # parameters are logged, flattened
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tokenizer")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "reporting")}
    assert {"tokenizer/tokenizer.json", "tokenizer/answer_vocab.json", "reporting/confusion_matrix.png"} <= artifacts

    # params are the resolved model and training config: the built model, not every preset
    params = run.data.params
    assert not [k for k in params if k.startswith("model.presets") or k == "model.preset"]
    assert params["model.text.vocab_size"] == str(len(json.loads((project / "data/06_models/tokenizer.json").glob("*/tokenizer.json").__next__().read_text())["model"]["vocab"]))  # fmt: skip
    model = torch.load(next((project / "data/06_models/model.pt").glob("*/model.pt")), weights_only=True)
    assert params["model.parameters"] == str(sum(t.numel() for t in model["state_dict"].values()))
    assert params["model.heads.answer.num_outputs"] == str(len(model["labels"]["answer"]))
    assert params["tasks.active"] == "answer+attributes" and params["training.controller.method"] == "calibrated"

    # a second run at another LR differs from the first in exactly that param
    run_kedro(project, "train", "--params", "training.lr=0.002")
    first, second = sorted(
        mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list"),
        key=lambda r: r.info.start_time,
    )
    a, b = first.data.params, second.data.params
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"training.lr"}
    assert (a["training.lr"], b["training.lr"]) == ("0.001", "0.002")


@pytest.mark.slow
def test_torchrun_entry_point_trains_from_the_catalog(project):
    for name in ("ingestion", "tokenization"):
        run_kedro(project, name)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "multimodal_doubleloop.commands.torchrun", "--env", "test", "--project", str(project)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((project / "data/08_reporting/training_history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
    assert len(list((project / "data/06_models/model.pt").iterdir())) == 1


@pytest.mark.slow
def test_a_killed_run_is_continued_as_one_mlflow_run(project):
    """`kill -9` mid-training, then the same command: the rerun resumes the checkpoint
    and logs into the MLflow run the killed process left RUNNING; one run, one curve."""
    import signal
    import time

    args = ["--params", "training.epochs=20,training.log_every=2"]  # 120 steps, a checkpoint every 4
    command = [sys.executable, "-m", "kedro", "run", "--pipeline=train", "--env", "test", *args]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = project / "data/06_models/checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/step_*.json")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    (killed,) = mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")
    assert killed.info.status == "RUNNING"

    run_kedro(project, "train", *args)
    (run,) = mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["project.resumes"] == "1"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "step_loss")]
    assert steps == list(range(2, 121, 2))  # one curve from the start: the resumed state kept the killed steps

    # a killed run of another configuration is marked KILLED, not continued
    proc = subprocess.Popen([*command[:-1], "training.epochs=21,training.log_every=2"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    client = mlflow.MlflowClient()
    while len(mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_kedro(project, "train", *args)  # the first configuration again: already finished, a new run
    runs = {r.info.run_id: r for r in mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")}
    assert len(runs) == 3 and runs[run.info.run_id].info.status == "FINISHED"
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED", "KILLED"]
    assert client.get_run(run.info.run_id).data.tags["project.resumes"] == "1"


@pytest.mark.slow
def test_two_runs_of_one_configuration_give_the_same_metrics_to_the_last_digit(project):
    """Same seed, same result, across processes: two fresh runs (the second may not
    resume the first) write byte-identical metrics and the same weights."""
    outputs = []
    for _ in range(2):
        run_kedro(project, "train", "--params", "training.epochs=3,training.resume=false")
        history = json.loads((project / "data/08_reporting/training_history.json").read_text())
        for row in history:  # wall-clock figures are the only ones allowed to differ
            del row["seconds"], row["questions_per_s"]
        outputs.append(((project / "data/08_reporting/metrics.json").read_text(), history))
    assert outputs[0] == outputs[1]
    first, second = (
        torch.load(path / "model.pt", weights_only=True)["state_dict"]
        for path in sorted((project / "data/06_models/model.pt").iterdir())
    )
    assert all(torch.equal(first[name], second[name]) for name in first)


def _runs(project: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list", order_by=["start_time"])


@pytest.mark.slow
def test_a_run_fine_tunes_from_the_previous_one_through_the_catalog(project):
    run_kedro(project)
    run_kedro(project, "train", "--params",  # another tokenizer setting: ignored, the previous run's is handed on
              "model.init_from=trained_model,training.layer_decay=0.8,training.freeze.vision=2,tokenization.vocab_size=40")
    first, second = _runs(project)
    params = second.data.params
    assert params["init.init_from"].startswith("trained_model@") and params["training.layer_decay"] == "0.8"
    assert params["training.freeze.vision"] == "2" and "init.init_from" not in first.data.params
    tokenizers = sorted((project / "data/06_models/tokenizer.json").glob("*/tokenizer.json"))
    assert len(tokenizers) == 2 and tokenizers[0].read_text() == tokenizers[1].read_text()  # the previous run's


@pytest.mark.slow
def test_the_seed_preset_starts_from_a_vit_b16_checkpoint_with_gradient_checkpointing(project):
    timm = pytest.importorskip("timm", reason="timm (the dev extra) makes the ViT-B/16 checkpoint")
    from safetensors.torch import save_file

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    save_file(vit.state_dict(), str(project / "vit_b16.safetensors"))
    del vit
    run_kedro(project, "train", "--params", ",".join([
        "model.preset=seed", f"model.pretrained.vision={project / 'vit_b16.safetensors'}",
        "model.presets.seed.gradient_checkpointing=true", "training.max_steps=2", "training.epochs=1",
        "ingestion.max_images_per_split=8",
    ]))
    (run,) = _runs(project)
    params = run.data.params
    assert (params["model.vision.dim"], params["model.vision.depth"], params["model.vision.output_dim"]) == ("768", "12", "512")
    assert params["model.gradient_checkpointing"] == "True" and params["init.vision"].startswith(str(project))
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
