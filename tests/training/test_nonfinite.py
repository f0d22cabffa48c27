"""Non-finite losses: the step is skipped and counted; too many in a row stop the run
with a message naming the step and the checkpoint directory."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.data.images import image_store
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.loop import NonFiniteLossError, train


def poisoned_tasks(bad_calls: set[int]) -> TaskSet:
    tasks = TaskSet.answer_only("answer", 0.0)
    real, calls = tasks.step, {"n": 0}

    def step(model, batch):
        result = real(model, batch)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            result.terms = {k: v * float("nan") for k, v in result.terms.items()}
        return result

    tasks.step = step
    return tasks


@pytest.fixture
def setup(samples, images, tokenized, model_params):
    config = resolve_model_config(model_params, 200, 16, len(tokenized["answer_vocab"]))
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    return config, split, image_store(images)


def test_isolated_nan_steps_are_skipped_and_counted(setup, training_params):
    config, split, store = setup
    model = build_model(ModelConfig.from_dict(config))
    cfg = TrainConfig.from_dict({**training_params, "epochs": 1, "checkpoint_every": 0, "resume": False})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = train(model, split, None, store, cfg, {}, poisoned_tasks({2, 4}))
    assert state.skipped_steps == 2 and state.bad_steps == 0
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k].to(v.device), v) for k, v in model.state_dict().items())  # it still trained


def test_consecutive_nan_steps_stop_with_a_clear_error(setup, training_params):
    config, split, store = setup
    model = build_model(ModelConfig.from_dict(config))
    cfg = TrainConfig.from_dict({**training_params, "epochs": 1, "max_bad_steps": 3, "checkpoint_every": 1})
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite steps ending at step 4; last good checkpoint") as err:
        train(model, split, None, store, cfg, {}, poisoned_tasks({3, 4, 5}))
    assert cfg.checkpoint_dir in str(err.value)
