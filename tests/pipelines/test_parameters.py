"""Every stage's parameters build before any node runs; the image size has one source."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from multimodal_doubleloop.pipelines.ingestion.nodes import decode_images
from multimodal_doubleloop.pipelines.parameters import check_parameters

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped() -> dict:
    params = {}
    for path in sorted((PROJECT / "conf" / "base").glob("parameters_*.yml")):
        params.update(yaml.safe_load(path.read_text()))
    return params


def test_the_shipped_parameters_build(shipped):
    check_parameters(copy.deepcopy(shipped))


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("training", {"lerning_rate": 1e-3}, r"training: unknown key\(s\) \['lerning_rate'\]"),
        ("tasks", {"active": ["answer", "nope"]}, r"tasks: .*unknown: \['nope'\]"),
        ("ingestion", {"val_fraction": 2.0}, r"ingestion: .*val_fraction=2.0"),
        ("controller_study", {"methods": ["fixed", "adam"]}, r"controller_study: .*use a subset of"),
        ("tokenization", {"vocab_size": 3}, r"tokenization: .*vocab_size=3"),
    ],
)
def test_a_wrong_key_or_value_names_its_section_and_key(shipped, section, change, message):
    params = copy.deepcopy(shipped)
    params[section].update(change)
    with pytest.raises(ValueError, match=message):
        check_parameters(params)


def test_a_model_key_is_checked_for_the_chosen_preset(shipped):
    params = copy.deepcopy(shipped)
    params["model"]["presets"]["cpu"]["vision"]["dpeth"] = 2
    with pytest.raises(ValueError, match=r"model: .*\['dpeth'\]"):
        check_parameters(params)


def test_image_size_comes_from_the_model_preset(shipped, samples, easy_vqa_raw):
    params = copy.deepcopy(shipped)
    params["model"]["preset"] = "seed"
    check_parameters(params)  # ingestion.image_size: 0 follows the preset (224)
    one = samples[samples["image_id"] == samples["image_id"].iloc[0]]
    images = decode_images(one, easy_vqa_raw[1], {**params["ingestion"], "max_images_per_split": 1}, params["model"])
    assert np.asarray(images["pixels"]).shape[1:3] == (224, 224)
    params["ingestion"]["image_size"] = 64  # a second source that disagrees
    with pytest.raises(ValueError, match=r"ingestion.image_size=64 but model preset 'seed' reads 224x224"):
        check_parameters(params)


@pytest.mark.slow
def test_kedro_run_with_a_wrong_key_fails_before_the_first_node(tmp_path):
    kedro = Path(sys.executable).parent / "kedro"
    result = subprocess.run(
        [kedro, "run", "--pipeline=train", "--env", "test", "--params", "training.lerning_rate=0.1"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "lerning_rate" in output
    assert "Running node" not in output
