"""`python -m multimodal_doubleloop.commands.predict` on the model of a tiny training run: from
the project's catalog and from the MLflow model URI; stdout carries only the answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from multimodal_doubleloop.commands.predict import run_inference
from multimodal_doubleloop.data.requests import encode_image_file, request_table
from multimodal_doubleloop.data.sources.easy_vqa import package_data
from multimodal_doubleloop.io import TorchModelDataset

pytestmark = pytest.mark.slow
QUESTION = "what color is the shape?"


def _cli(project, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "multimodal_doubleloop.commands.predict", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)


def _parse(stdout: str) -> tuple[str, list[tuple[str, float]], dict[str, str]]:
    """The answer, its indented top-k table, and one `head: value` line per other head."""
    first, *rows = stdout.splitlines()
    assert first.startswith("answer: ")
    top = [(a, float(p)) for a, p in (row.split() for row in rows if row.startswith("  "))]
    heads = dict(row.split(": ", 1) for row in rows if not row.startswith("  "))
    return first.removeprefix("answer: "), top, heads


@pytest.fixture(scope="module")
def image_and_expected(trained_project):
    """A test image and the in-process answer of the latest versioned model to it."""
    samples = pd.read_parquet(trained_project.path / "data/02_intermediate/samples.parquet")
    image = Path(package_data()) / samples.loc[samples["split"] == "test", "image_path"].iloc[0]
    (model_file,) = (trained_project.path / "data/06_models/model.pt").glob("*/model.pt")
    (tokenizer_file,) = (trained_project.path / "data/06_models/tokenizer.json").glob("*/tokenizer.json")
    expected = run_inference(
        request_table([encode_image_file(image)], [QUESTION]),
        TorchModelDataset(str(model_file)).load(),
        tokenizer_file.read_text(),
        json.loads((trained_project.path / "data/05_model_input/answer_vocab.json").read_text()),
        top_k=4,
    ).iloc[0]
    return image, expected


def test_cli_reads_the_latest_model_from_the_catalog(trained_project, image_and_expected):
    image, expected = image_and_expected
    result = _cli(trained_project.path, "--image", image, "--text", QUESTION, "--env", "test", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    answer, top, heads = _parse(result.stdout)  # nothing but the answer lines on stdout
    assert answer == expected["answer"]
    assert [a for a, _ in top] == list(expected["top_answers"])
    assert [p for _, p in top] == pytest.approx(list(expected["top_probabilities"]), abs=1e-4)
    # the default task set's second head, by class name (multi-label: those above 0.5)
    assert heads["attributes"] == (", ".join(expected["attributes"]) or "(none)")
    assert "conf/logging.yml" in result.stderr  # Kedro's logging went to stderr


def test_cli_with_an_mlflow_model_uri(trained_project, image_and_expected, tmp_path):
    image, expected = image_and_expected
    uri = ["--model-uri", trained_project.model_uri, "--tracking-uri", trained_project.tracking_uri]
    result = _cli(tmp_path, "--image", image, "--text", QUESTION, *uri)  # outside the project
    assert result.returncode == 0, result.stderr
    answer, top, _ = _parse(result.stdout)
    assert answer == expected["answer"] and len(top) == 3  # the logged default top_k

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    result = _cli(tmp_path, "--image", str(not_an_image), "--text", QUESTION, *uri)
    assert result.returncode == 1 and result.stdout == ""
    assert "cannot answer: row 0: column 'image' decodes to 13 bytes that are not a PNG or JPEG image" in result.stderr  # fmt: skip
