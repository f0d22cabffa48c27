"""The GPU paths: bf16 autocast, fp16 with GradScaler, torch.compile and the double
loop on CUDA. Skipped where no GPU is visible (CI has none); the rest of
`tests/training` also runs on CUDA there, since `training.device: auto` picks it."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.data.images import image_store
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training import loop
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.controller import ControllerConfig, build_adapter, hypergradient

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def setup(samples, images, tokenized, model_params):
    config = resolve_model_config(model_params, 200, 16, len(tokenized["answer_vocab"]))
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    return config, split, image_store(images)


def _cfg(training_params, **overrides) -> TrainConfig:
    return TrainConfig.from_dict(
        {**training_params, "epochs": 4, "checkpoint_every": 0, "resume": False, "log_every": 5, **overrides}
    )


@pytest.mark.parametrize(
    ("precision", "compile_step"), [("bf16", False), ("fp16", False), ("bf16", True)]
)
def test_mixed_precision_training_on_cuda(setup, training_params, precision, compile_step):
    config, split, store = setup
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config))
    cfg = _cfg(training_params, precision=precision, compile=compile_step)
    state = loop.train(model, split, None, store, cfg, {}, TaskSet.answer_only())
    assert next(model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    # fp16: GradScaler may skip its first few steps while it finds a scale; no more
    assert state.skipped_steps <= (3 if precision == "fp16" else 0)


def test_double_loop_on_cuda_keeps_scales_in_bounds(setup, training_params, monkeypatch):
    """The device-side hypergradient meter (bias corrections per parameter on the GPU)
    drives real decisions, and every scale stays inside the configured bounds."""
    config, split, store = setup
    assert not hypergradient.steps_on_host(torch.device("cuda"))
    model = build_model(ModelConfig.from_dict(config))
    cfg = _cfg(training_params, epochs=6)
    cfg.controller = ControllerConfig(method="double_loop", every=4, measure_every=1)
    adapter = build_adapter(cfg.controller, list(model.parameter_groups()), warmup_steps=2)
    state = loop.train(model, split, None, store, cfg, {}, TaskSet.answer_only(), adapter)
    assert len(adapter.trace) >= 3, "too few controller decisions"
    bound = math.exp(cfg.controller.max_log_scale) * (1 + 1e-9)
    scales = [v for row in adapter.trace for k, v in row.items() if k.startswith("lr_scale/")]
    assert scales and all(1 / bound <= v <= bound for v in scales)
    assert any(v != 1.0 for v in scales), "the controller never moved a scale"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state.step > 0
