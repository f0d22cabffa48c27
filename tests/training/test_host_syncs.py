"""The inner loop never reads a tensor back to the host between sync points (log
steps, checkpoints, epoch ends): on a GPU each such read would stall the queue.

On CPU a read costs nothing, so the test counts them instead: every way a tensor
becomes a Python value (`item`, `tolist`, `bool`, `float`, `int`) is wrapped, and a
run whose only sync points are its last step and epoch end must make none elsewhere
(batch building in `data/` works on host tensors by design and is not counted)."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch

from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.data.images import image_store
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training import loop
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.controller import ControllerConfig, build_adapter, hypergradient
from multimodal_doubleloop.training.state import RunningStats

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
HOST_DATA = str(Path(loop.__file__).parents[1] / "data")


@pytest.fixture
def counted_reads(monkeypatch) -> list[str]:
    """Where each host read of a tensor happened (innermost project frame)."""
    reads: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if "multimodal_doubleloop" in f.filename]
            if frames and not any(f.filename.startswith(HOST_DATA) for f in frames):
                reads.append(f"{_name} at {Path(frames[-1].filename).name}:{frames[-1].lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return reads


def _setup(samples, tokenized, images, model_params, training_params):
    config = resolve_model_config(model_params, 200, 16, len(tokenized["answer_vocab"]))
    # the layout an accelerator runs (`unpad: auto` is off there): on CPU, skipping the
    # padding reads token counts, which is free on the host
    config["text"]["unpad"] = config["fusion"]["unpad"] = "off"
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    model = build_model(ModelConfig.from_dict(config))
    cfg = TrainConfig.from_dict(
        {**training_params, "epochs": 1, "checkpoint_every": 0, "resume": False, "log_every": 10_000}
    )
    return model, split, cfg


@pytest.mark.parametrize("method", ["fixed", "double_loop"])
def test_training_steps_do_not_read_the_device(
    samples, images, tokenized, model_params, training_params, monkeypatch, counted_reads, method
):
    """With the controller on, its hypergradient measurement (here every step) and
    statistics stay on the device too (no window ends in this short run; AdamW's step
    counts are read as on an accelerator, not as on CPU where that read is free)."""
    monkeypatch.setattr(hypergradient, "steps_on_host", lambda device: False)
    model, split, cfg = _setup(samples, tokenized, images, model_params, training_params)
    cfg.controller = ControllerConfig(method=method, every=1000, measure_every=1)
    adapter = build_adapter(cfg.controller, list(model.parameter_groups()), warmup_steps=0)
    between_syncs: list[list[str]] = []
    real_sync = RunningStats.sync

    def sync(self, state, cfg, loss):
        between_syncs.append(list(counted_reads))
        real_sync(self, state, cfg, loss)

    monkeypatch.setattr(RunningStats, "sync", sync)
    counted_reads.clear()  # model construction is not the loop
    state = loop.train(model, split, None, image_store(images), cfg, {}, TaskSet.answer_only(), adapter)
    assert state.step >= 3  # several steps ran before the first sync point
    if adapter is not None:
        assert float(adapter.window.meter.sums[:, -1].sum()) > 0  # it did measure
    assert between_syncs[0] == [], f"host reads during {state.step} training steps: {between_syncs[0]}"
    assert state.history[0]["train_loss"] > 0 and 0 <= state.history[0]["train_accuracy"] <= 1


def test_a_read_in_the_step_is_caught(samples, images, tokenized, model_params, training_params, monkeypatch, counted_reads):
    """The counter is not blind: a `float(loss)` in the loop's path shows up."""
    real_total = loop.total
    monkeypatch.setattr(loop, "total", lambda terms: real_total(terms) * float(real_total(terms).detach() > -1))
    model, split, cfg = _setup(samples, tokenized, images, model_params, training_params)
    counted_reads.clear()
    loop.train(model, split, None, image_store(images), cfg, {}, TaskSet.answer_only())
    assert any(r.startswith("__float__") or r.startswith("__bool__") for r in counted_reads)
