"""Interrupting training and rerunning resumes from the last checkpoint, exactly."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.models import ModelConfig, build_model
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.checkpoint import list_checkpoints, run_directory
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.loop import train


class Interrupt(Exception):
    pass


class StopAt:
    """An adapter that changes nothing but raises at a given step (a crash)."""

    def __init__(self, step: int):
        self.step = step

    def decides_at(self, step: int) -> bool:
        return True

    def scales(self) -> dict:
        return {}

    def weight_decay_scales(self) -> dict:
        return {}

    def before_step(self, step, optimizer) -> None:
        pass

    def observe(self, step, stats, optimizer) -> None:
        if step == self.step:
            raise Interrupt(step)

    def validation_images(self) -> int:
        return 0

    def wants_validation(self, step) -> bool:
        return False

    def observe_validation(self, loss) -> None:
        pass

    def stop_requested(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


def _run(config, split, store, cfg, adapter=None):
    torch.manual_seed(123)  # model init; train() seeds the rest from cfg.seed
    model = build_model(ModelConfig.from_dict(config))
    state = train(model, split, None, store, cfg, {"model": config, "training": cfg.to_dict()}, TaskSet.answer_only(), adapter)
    return model, state


def test_interrupted_run_resumes_to_identical_weights(train_setup, training_params, tmp_path):
    config, split, store = train_setup
    params = {**training_params, "epochs": 2, "checkpoint_every": 2, "label_smoothing": 0.1}
    reference, ref_state = _run(config, split, store, TrainConfig.from_dict({**params, "checkpoint_dir": str(tmp_path / "a")}))

    cfg = TrainConfig.from_dict({**params, "checkpoint_dir": str(tmp_path / "b")})
    with pytest.raises(Interrupt):
        _run(config, split, store, cfg, adapter=StopAt(ref_state.step - 3))  # mid second epoch
    assert list_checkpoints(run_directory(cfg.checkpoint_dir, {"model": config, "training": cfg.to_dict()}))
    resumed, state = _run(config, split, store, cfg)

    assert state.step == ref_state.step
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in ref_state.history]
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # bit-identical on CPU


def test_another_configuration_starts_fresh_and_the_first_still_resumes(train_setup, training_params, tmp_path, caplog):
    """Switching parameters (or data) needs no clean-up: each configuration has its own
    folder of checkpoints, and only the newest `keep_configs` are kept."""
    config, split, store = train_setup
    base = {**training_params, "epochs": 1, "checkpoint_dir": str(tmp_path), "keep_configs": 2}
    _, first = _run(config, split, store, TrainConfig.from_dict(base))
    with caplog.at_level("INFO", logger="multimodal_doubleloop.training.checkpoint"):
        _, other = _run(config, split, store, TrainConfig.from_dict({**base, "lr": 0.01}))
    assert other.step == first.step and "starting fresh" in caplog.text and "1 other configuration" in caplog.text
    assert len([p for p in tmp_path.iterdir() if list_checkpoints(p)]) == 2
    caplog.clear()
    with caplog.at_level("INFO", logger="multimodal_doubleloop.training.checkpoint"):
        _, again = _run(config, split, store, TrainConfig.from_dict({**base, "epochs": 2}))  # epochs may change
    assert "Resumed from checkpoint at step" in caplog.text and again.step == 2 * first.step
    assert again.history[0] == first.history[0]  # the first epoch came from the checkpoint
    _run(config, split, store, TrainConfig.from_dict({**base, "lr": 0.02}))  # a third: the oldest goes
    assert len([p for p in tmp_path.iterdir() if list_checkpoints(p)]) == 2
    assert run_directory(tmp_path, {"model": config, "training": TrainConfig.from_dict(base).to_dict()}).exists()


def test_max_steps_inside_an_epoch_then_more_steps_continues_that_epoch(train_setup, training_params, tmp_path, caplog):
    """A run stopped by max_steps mid-epoch, rerun with a larger budget, finishes the
    same epoch (no batch skipped) instead of starting the next one; its history has that
    epoch once, and the log says the LR schedule changed under it."""
    config, split, store = train_setup
    params = {**training_params, "epochs": 2, "checkpoint_every": 100, "checkpoint_dir": str(tmp_path / "c")}
    _, ref_state = _run(config, split, store, TrainConfig.from_dict({**params, "checkpoint_dir": str(tmp_path / "ref")}))
    per_epoch = ref_state.history[0]["step"]
    assert per_epoch >= 3
    _, first = _run(config, split, store, TrainConfig.from_dict({**params, "max_steps": per_epoch - 1}))
    assert first.epoch == 0 and first.history[-1]["partial"] == 1.0
    with caplog.at_level("WARNING", logger="multimodal_doubleloop.training.loop"):
        _, state = _run(config, split, store, TrainConfig.from_dict(params))
    assert state.step == ref_state.step
    assert [(h["epoch"], h["step"]) for h in state.history] == [(h["epoch"], h["step"]) for h in ref_state.history]
    assert f"the checkpoint's LR schedule ran to {per_epoch - 1}" in caplog.text


def test_settings_added_since_keep_a_configuration_s_checkpoints_at_their_defaults(training_params):
    """`texts_per_image: 0` and `fusion.unpad: auto` (added later) are what runs from before
    had: a checkpoint made without them resumes; another value is another configuration."""
    from multimodal_doubleloop.training.checkpoint import _config_diff, config_digest

    training = TrainConfig.from_dict(training_params).to_dict()
    before = {"model": {"fusion": {"dim": 8}}, "training": {k: v for k, v in training.items() if k != "texts_per_image"}}
    now = {"model": {"fusion": {"dim": 8, "unpad": "auto"}}, "training": {**training, "texts_per_image": 0}}
    assert config_digest(now) == config_digest(before) and _config_diff(before, now) == []
    subset = {**now, "training": {**now["training"], "texts_per_image": 4}}
    padded = {**now, "model": {"fusion": {"dim": 8, "unpad": "off"}}}
    assert len({config_digest(now), config_digest(subset), config_digest(padded)}) == 3


def test_a_resume_with_nothing_left_to_train_says_so(train_setup, training_params, tmp_path, caplog):
    """A shorter budget than the checkpoint's (epochs may change across a resume) trains
    nothing; the log says so and how to start over."""
    config, split, store = train_setup
    base = {**training_params, "epochs": 2, "checkpoint_dir": str(tmp_path)}
    _, done = _run(config, split, store, TrainConfig.from_dict(base))
    with caplog.at_level("WARNING", logger="multimodal_doubleloop.training.loop"):
        _, again = _run(config, split, store, TrainConfig.from_dict({**base, "epochs": 1}))
    assert again.step == done.step and "nothing left to train" in caplog.text
    assert "training.resume=false" in caplog.text
