"""Parameters are validated at the boundary: unknown keys, wrong types, out-of-range
values fail before any work, naming the key path."""

import pytest
import yaml

from multimodal_doubleloop.models import ModelConfig
from multimodal_doubleloop.training.config import TrainConfig


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": "fast"}, r"training.lr='fast' has type str"),
        ({"epochs": 1.5}, r"training.epochs=1.5 has type float"),
        ({"lrr": 1}, r"unknown key\(s\) \['lrr'\] in training"),
        ({"epochs": 0}, r"out-of-range value\(s\) epochs=0"),
        ({"grad_clip": -1.0}, r"grad_clip=-1.0"),
        ({"precision": "fp8"}, r"precision='fp8'"),
        ({"resume": "yes"}, r"training.resume='yes' has type str"),
        ({"group_lr": {"head": 2.0}}, r"group_lr: unknown group\(s\) \['head'\]; use \['vision'"),
        ({"group_lr": {"vision": -1.0}}, r"group_lr: multipliers must be numbers > 0, got \{'vision': -1.0\}"),
    ],
)
def test_bad_training_params_fail_with_key_path(params, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vision": {"depth": "3"}}, r"model.vision.depth='3' has type str"),
        ({"fusion": {"kind": "mid"}}, r"fusion.kind='mid'"),
        ({"text": {"dmi": 3}}, r"unknown key\(s\) \['dmi'\] in model.text"),
        ({"vision": {"image_size": 60}}, r"image_size=60 must be a multiple"),
        ({"vision": {"dim": 64}}, r"dims must match"),
    ],
)
def test_bad_model_params_fail_with_key_path(params, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(params)


def test_shipped_parameter_files_are_valid():
    training = yaml.safe_load(open("conf/base/parameters_training.yml"))["training"]
    assert TrainConfig.from_dict(training).betas == (0.9, 0.98)
    presets = yaml.safe_load(open("conf/base/parameters_model.yml"))["model"]["presets"]
    for preset in presets.values():
        ModelConfig.from_dict(preset)
