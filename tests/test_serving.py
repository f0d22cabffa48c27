"""The MLflow model that `kedro run --pipeline=train` logs, served for real by
`mlflow models serve --env-manager local` on loopback, and loaded in-process."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from layouts import png_header
from PIL import Image

from multimodal_doubleloop.commands.predict import run_inference
from multimodal_doubleloop.data.requests import encode_image
from multimodal_doubleloop.io import TorchModelDataset

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent  # the venv's bin: mlflow, and uvicorn which it execs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(trained_project) -> Path:
    assert (trained_project.model_dir / "MLmodel").exists()
    return trained_project.model_dir


@contextlib.contextmanager
def serving(model_uri, cwd: Path, env: dict, mlflow_bin: Path = BIN / "mlflow"):
    """`mlflow models serve` of `model_uri` on a free port until it answers /ping (at
    most 180 s); yields its URL, then stops it (its process group)."""
    port = _free_port()
    command = [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log_path = cwd / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no /ping from the server in 180 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trained_project):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained_project.tracking_uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    with serving("models:/multimodal_doubleloop@champion", trained_project.path, env) as url:  # what the README serves
        yield url


def _post(url: str, frame: pd.DataFrame, params: dict | None = None) -> requests.Response:
    payload = {"dataframe_split": frame.to_dict(orient="split")}
    payload["dataframe_split"].pop("index")
    if params:
        payload["params"] = params
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def _requests(trained_project) -> pd.DataFrame:
    """The example requests the train run wrote, one as JPEG, one repeated."""
    frame = pd.read_parquet(trained_project.path / "data/05_model_input/inference_requests.parquet")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(frame["image"].iloc[0]))).convert("RGB").save(jpeg, format="JPEG")
    extra = pd.DataFrame({"image": [encode_image(jpeg.getvalue()), frame["image"].iloc[1]], "text": ["what shape is it?", "what color is the shape?"]})  # fmt: skip
    return pd.concat([frame, extra], ignore_index=True)


def _in_process(trained_project, frame: pd.DataFrame, top_k: int) -> pd.DataFrame:
    serving = trained_project.path / "data/06_models/serving"
    return run_inference(
        frame,
        TorchModelDataset(str(serving / "model.pt")).load(),
        (serving / "tokenizer.json").read_text(),
        json.loads((serving / "answer_vocab.json").read_text()),
        top_k,
    )


def test_logged_model_has_signature_example_and_only_unversioned_artifacts(model_dir):
    model = mlflow.models.Model.load(model_dir / "MLmodel")
    inputs = model.signature.inputs.to_dict()
    assert [(c["name"], c["type"]) for c in inputs] == [("image", "string"), ("text", "string")]
    assert {p.name: p.default for p in model.signature.params.params}["inference.top_k"] == 3
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image", "text"]
    assert base64.b64decode(example["dataframe_split"]["data"][0][0]).startswith(b"\x89PNG")
    artifacts = {p.name for p in (model_dir / "artifacts").iterdir()}
    assert artifacts == {"model.pt", "tokenizer.json", "answer_vocab.json", "params_inference.top_k.pkl"}
    requirements = (model_dir / "requirements.txt").read_text()
    assert "torch==" in requirements and "multimodal-doubleloop" not in requirements  # only what PyPI has
    assert (model_dir / "code" / "multimodal_doubleloop" / "pipelines" / "inference" / "nodes.py").is_file()  # it carries the code


def test_served_answers_match_in_process_predictions(trained_project, server, model_dir):
    frame = _requests(trained_project)
    response = _post(server, frame)
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    expected = _in_process(trained_project, frame, top_k=3)
    loaded = mlflow.pyfunc.load_model(str(model_dir)).predict(frame)
    for other in (expected, loaded):
        assert served["answer"].tolist() == other["answer"].tolist()
        assert served["top_answers"].tolist() == [list(a) for a in other["top_answers"]]
        np.testing.assert_allclose(np.stack(served["top_probabilities"]), np.stack(other["top_probabilities"]), atol=1e-6)  # fmt: skip
    # the logged input example is itself a valid request, and top_k can be set per request
    example = (model_dir / "serving_input_example.json").read_text()
    response = requests.post(f"{server}/invocations", data=example, headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert response.status_code == 200 and len(response.json()["predictions"][0]["top_answers"]) == 3
    five = _post(server, frame.head(2), params={"inference.top_k": 5}).json()["predictions"]
    assert [len(p["top_answers"]) for p in five] == [5, 5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "@@@ this is not base64 @@@"}, "row 1: column 'image' is not valid base64"),
        ({"image": base64.b64encode(b"GIF89a? no, plain text").decode()}, "row 1: column 'image' decodes to 22 bytes that are not a PNG or JPEG image"),  # fmt: skip
        ({"text": ""}, "row 1: column 'text' is empty"),
        ({"text": None}, "Model is missing inputs ['text']"),  # the column is dropped
        ({"image": base64.b64encode(png_header(12000, 12000)).decode()}, "row 1: column 'image' is a 12000x12000 image (144000000 pixels), over the limit of 16000000 pixels (inference.limits.max_image_pixels)"),  # fmt: skip
    ],
    ids=["bad-base64", "not-an-image", "empty-text", "missing-column", "pixel-bomb"],
)
def test_bad_requests_get_400_with_a_clear_message_and_the_server_stays_up(trained_project, server, change, message):  # fmt: skip
    frame = _requests(trained_project).head(2).copy()
    for column, value in change.items():
        if value is None:
            frame = frame.drop(columns=column)
        else:
            frame.loc[1, column] = value
    response = _post(server, frame)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in body["message"]
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200
    assert _post(server, _requests(trained_project).head(1)).status_code == 200


def test_the_network_is_built_once_when_the_model_loads(model_dir, monkeypatch):
    """Requests share the network the model built at load: no build per request."""
    from multimodal_doubleloop.models import serving

    built = []
    real = serving.build_model
    monkeypatch.setattr(serving, "build_model", lambda cfg: built.append(cfg) or real(cfg))
    model = mlflow.pyfunc.load_model(str(model_dir))
    assert len(built) == 1  # at load
    example = json.loads((model_dir / "serving_input_example.json").read_text())["dataframe_split"]
    requests_frame = pd.DataFrame(example["data"], columns=example["columns"])
    first = model.predict(requests_frame)
    for _ in range(3):
        again = model.predict(requests_frame)
    assert len(built) == 1 and again.equals(first)


def test_train_run_is_named_logs_its_input_and_registers_the_champion(trained_project):
    client = mlflow.MlflowClient(trained_project.tracking_uri)
    champion = client.get_model_version_by_alias("multimodal_doubleloop", "champion")
    assert champion.run_id == trained_project.run_id and int(champion.version) == 1
    assert champion.tags["promoted_to_champion"] == "true"
    run = client.get_run(trained_project.run_id)
    assert run.info.run_name == "train easy_vqa tiny calibrated lr=0.001"
    (logged,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert logged.name == "samples" and logged.digest and run.data.tags["data_source"] == "easy_vqa"
    assert len(run.data.tags["test_set_sha256"]) == 64  # the champion rule compares on one test set
    experiment = client.get_experiment(run.info.experiment_id)  # `mlflow ui` opens on "Training runs"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_logged_model_installs_and_serves_from_its_own_requirements(model_dir, tmp_path_factory):
    """Outside the repository, a fresh venv with only the model's requirements.txt (what
    an index has) serves the model: the project's code comes from the model itself."""
    import shutil

    work = tmp_path_factory.mktemp("fresh_serving")
    model = shutil.copytree(model_dir, work / "model")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-r", model / "requirements.txt"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    importable = subprocess.run([venv / "bin" / "python", "-c", "import multimodal_doubleloop"], cwd=work, env=env, capture_output=True)  # fmt: skip
    assert importable.returncode != 0  # the project is not installed: the model carries it

    with serving(model, work, env, venv / "bin" / "mlflow") as url:
        example = (model / "serving_input_example.json").read_text()
        response = requests.post(f"{url}/invocations", data=example, headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"][0]["top_answers"]) == 3


def test_batch_inference_scores_with_the_registry_champion(trained_project, tmp_path):
    """`kedro run --pipeline=inference --env champion`: the model, tokenizer and answers
    come from `models:/multimodal_doubleloop@champion`, and score as the served model."""
    import yaml
    from conftest import run_pipeline
    from kedro.io import DataCatalog

    from multimodal_doubleloop.io import ParquetBatchesDataset
    from multimodal_doubleloop.models.serving import ServingModel
    from multimodal_doubleloop.pipelines.inference import create_batch_pipeline

    mlflow.set_tracking_uri(trained_project.tracking_uri)
    entries = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/champion/catalog.yml").read_text())
    champion = DataCatalog.from_config(entries)
    assert isinstance(champion.load("inference_model"), ServingModel)
    frame = _requests(trained_project)
    frame.to_parquet(tmp_path / "requests.parquet")
    out = ParquetBatchesDataset(str(tmp_path / "predictions"))
    run_pipeline(
        create_batch_pipeline(),
        {"params:inference.top_k": 3},
        {
            **{name: champion.get(name) for name in entries},
            "batch_requests": ParquetBatchesDataset(str(tmp_path / "requests.parquet"), batch_rows=2),
            "batch_predictions": out,
        },
    )
    scored = pd.concat(out.load(), ignore_index=True)
    assert scored["answer"].tolist() == _in_process(trained_project, frame, 3)["answer"].tolist()
