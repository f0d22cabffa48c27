"""The presets in conf/base/parameters_model.yml build, and `seed` has the design's size."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config

PARAMS = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_model.yml"


def preset(name: str, vocab_size: int = 30522, max_length: int = 32, answers: int = 13) -> dict:
    """A preset completed with the sizes the data decides, as the training node does."""
    presets = yaml.safe_load(PARAMS.read_text())["model"]["presets"]
    cfg = copy.deepcopy(presets[name])
    cfg["text"] = {**cfg["text"], "vocab_size": vocab_size, "max_length": max_length}
    cfg["heads"]["answer"]["num_outputs"] = answers
    return cfg


def test_every_preset_is_a_valid_config():
    presets = yaml.safe_load(PARAMS.read_text())["model"]["presets"]
    assert {"cpu", "seed"} <= set(presets)
    for name in presets:
        ModelConfig.from_dict(preset(name))


def test_seed_preset_has_the_design_shape_and_100_to_150m_parameters():
    cfg = ModelConfig.from_dict(preset("seed"))
    assert (cfg.vision.dim, cfg.text.dim, cfg.fusion.dim) == (512, 512, 512)
    assert (cfg.vision.heads, cfg.text.heads, cfg.fusion.heads) == (8, 8, 8)
    assert (cfg.vision.depth, cfg.text.depth, cfg.fusion.depth) == (12, 12, 6)
    with torch.device("meta"):  # count without allocating ~0.5 GB
        model = build_model(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert 100e6 <= count <= 150e6, f"{count / 1e6:.1f} M parameters"


@pytest.mark.parametrize("vocab_size, answers", [(30522, 13), (200, 13)])
def test_seed_count_stays_in_range_for_data_sizes(vocab_size, answers):
    """The small tokenizer the pipeline trains must not push the count out of range."""
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(preset("seed", vocab_size, 16, answers)))
    assert 100e6 <= sum(p.numel() for p in model.parameters()) <= 150e6


def test_cpu_preset_trains_a_step():
    cfg = ModelConfig.from_dict(preset("cpu", vocab_size=200, max_length=16))
    torch.manual_seed(0)
    model = build_model(cfg)
    size = cfg.vision.image_size
    batch = {
        "images": torch.rand(2, 3, size, size),
        "image_index": torch.tensor([0, 0, 1, 1]),
        "input_ids": torch.randint(7, 200, (4, 16)),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
    }
    logits = model(tasks=["answer"], **batch)["answer"]
    assert logits.shape == (4, 13)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resolve_model_config_fills_data_sizes(model_params):
    config = resolve_model_config(model_params, vocab_size=77, max_length=16, num_answers=13)
    assert config["text"]["vocab_size"] == 77 and config["heads"]["answer"]["num_outputs"] == 13
    assert "vocab_size" not in model_params["presets"]["tiny"]["text"]  # params untouched


def test_unknown_preset_and_keys_fail_before_training(model_params):
    with pytest.raises(ValueError, match="model.preset='huge'"):
        resolve_model_config({**model_params, "preset": "huge"}, 77, 16, 13)
    model_params["presets"]["tiny"]["vision"]["dpeth"] = 2
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dpeth'\] in model.vision"):
        resolve_model_config(model_params, 77, 16, 13)


def test_task_heads_come_from_the_task_layer_callback(model_params):
    seen = {}

    def heads(preset_heads, sizes):
        seen.update(preset=preset_heads, sizes=sizes)
        return {"answer": {**preset_heads["answer"], "num_outputs": 5}}

    config = resolve_model_config(model_params, 77, 16, heads=heads)
    assert config["heads"]["answer"]["num_outputs"] == 5
    assert seen["sizes"] == {"vocab_size": 77, "max_length": 16, "dim": 32}
