"""The inner optimiser: AdamW and the learning-rate-free peers, built from config,
trained through the real loop, checkpointed and resumed exactly."""

from __future__ import annotations

import pytest
import torch
from test_resume import Interrupt, StopAt

from multimodal_doubleloop.models import ModelConfig, build_model
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.loop import train
from multimodal_doubleloop.training.optim import (
    PEERS,
    eval_weights,
    make_optimizer,
    set_learning_rates,
)

PACKAGES = {name: module for name, (module, _) in PEERS.items()}


def _run(train_setup, params, adapter=None, val=None):
    config, split, store = train_setup
    cfg = TrainConfig.from_dict(params)
    torch.manual_seed(123)
    model = build_model(ModelConfig.from_dict(config))
    state = train(model, split, val, store, cfg, {"model": config, "training": cfg.to_dict()}, TaskSet.answer_only(),
                  adapter)
    return model, state


@pytest.mark.parametrize("optimizer", sorted(PEERS))
def test_each_peer_trains_and_resumes_exactly(train_setup, training_params, tmp_path, optimizer):
    pytest.importorskip(PACKAGES[optimizer], reason="the study extra is not installed")
    params = {**training_params, "optimizer": optimizer, "epochs": 2, "checkpoint_every": 2,
              "lr": 1.0 if optimizer in ("prodigy", "dadapt_adam", "mechanic_adamw") else 1e-3}
    reference, ref_state = _run(train_setup, {**params, "checkpoint_dir": str(tmp_path / "a")})
    assert ref_state.history[-1]["train_loss"] < ref_state.history[0]["train_loss"] or optimizer == "mechanic_adamw"
    assert all(torch.isfinite(v).all() for v in reference.state_dict().values())
    interrupted = {**params, "checkpoint_dir": str(tmp_path / "b")}
    with pytest.raises(Interrupt):
        _run(train_setup, interrupted, adapter=StopAt(ref_state.step - 3))
    resumed, state = _run(train_setup, interrupted)
    assert state.step == ref_state.step
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # bit-identical on CPU


def test_peers_refuse_the_outer_loop_and_group_lrs(training_params):
    with pytest.raises(ValueError, match="controller.method: fixed"):
        TrainConfig.from_dict({**training_params, "optimizer": "prodigy", "controller": {"method": "double_loop"}})
    with pytest.raises(ValueError, match="group_lr"):
        TrainConfig.from_dict({**training_params, "optimizer": "dadapt_adam", "group_lr": {"heads": 2.0}})
    with pytest.raises(ValueError, match=r"training.optimizer='adam'"):
        TrainConfig.from_dict({**training_params, "optimizer": "adam"})


def test_schedule_free_keeps_its_lr_and_evaluates_the_averaged_iterate(train_setup, training_params):
    pytest.importorskip("schedulefree")
    config, split, store = train_setup
    cfg = TrainConfig.from_dict({**training_params, "optimizer": "schedulefree_adamw", "lr": 2e-3})
    model = build_model(ModelConfig.from_dict(config))
    optimizer = make_optimizer(model, cfg)
    assert set_learning_rates(optimizer, cfg, 0, 100, {}) == 2e-3 == set_learning_rates(optimizer, cfg, 90, 100, {})
    params = list(model.parameters())
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    trained = [p.detach().clone() for p in params]
    with eval_weights(optimizer):
        averaged = [p.detach().clone() for p in params]
    assert any(not torch.equal(a, b) for a, b in zip(trained, averaged, strict=True))  # x, not y
    assert all(torch.allclose(a, p, atol=1e-6) for a, p in zip(trained, params, strict=True))  # back to y


def test_adamw_is_fused_and_decays_only_matrices(train_setup, training_params):
    config, _, _ = train_setup
    model = build_model(ModelConfig.from_dict(config))
    optimizer = make_optimizer(model, TrainConfig.from_dict(training_params))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    for group in optimizer.param_groups:
        assert (group["weight_decay"] > 0) == all(p.ndim >= 2 for p in group["params"])
