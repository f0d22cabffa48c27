"""Fine-tuning controls through the real loop: components frozen until a step, and
layer-wise LR decay on top of `group_lr` and the outer loop's per-group scales."""

from __future__ import annotations

import pytest
import torch
from test_resume import Interrupt, StopAt

from multimodal_doubleloop.models import ModelConfig, build_model
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.finetune import frozen, layer_scales
from multimodal_doubleloop.training.loop import train
from multimodal_doubleloop.training.optim import make_optimizer, set_learning_rates


def _run(train_setup, params, adapter=None):
    config, split, store = train_setup
    cfg = TrainConfig.from_dict(params)
    torch.manual_seed(7)
    model = build_model(ModelConfig.from_dict(config))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, split, None, store, cfg, {"model": config, "training": cfg.to_dict()}, TaskSet.answer_only(), adapter)
    return start, model


def _changed(start: dict, model, prefix: str) -> bool:
    return any(not torch.equal(start[k], v) for k, v in model.state_dict().items() if k.startswith(prefix))


def test_a_frozen_tower_keeps_its_weights_until_its_step(train_setup, training_params):
    params = {**training_params, "freeze": {"vision": 4}, "checkpoint_every": 0}
    start, model = _run(train_setup, {**params, "max_steps": 4})
    assert not _changed(start, model, "vision.") and _changed(start, model, "text.")
    assert all(p.requires_grad for p in model.vision.parameters())  # unfrozen at step 4
    start, model = _run(train_setup, {**params, "max_steps": 6})
    assert _changed(start, model, "vision.")


def test_freeze_true_holds_for_the_whole_run(train_setup, training_params):
    start, model = _run(train_setup, {**training_params, "freeze": {"text": True, "heads": False}})
    assert not _changed(start, model, "text.") and _changed(start, model, "heads.")
    assert not any(p.requires_grad for p in model.text.parameters())


def test_the_fine_tuning_keys_at_their_defaults_keep_a_configuration_s_checkpoints(training_params):
    from multimodal_doubleloop.training.checkpoint import _config_diff, config_digest

    now = {"model": {"a": 1}, "training": TrainConfig.from_dict(training_params).to_dict()}
    before = {"model": {"a": 1}, "training": {k: v for k, v in now["training"].items() if k not in ("freeze", "layer_decay")}}
    assert config_digest(now) == config_digest(before) and _config_diff(before, now) == []
    tuned = {**now, "training": {**now["training"], "layer_decay": 0.5}}
    assert config_digest(tuned) != config_digest(now) and _config_diff(before, tuned) == ["training.layer_decay"]


def test_a_run_resumed_across_the_unfreeze_step_is_bit_identical(train_setup, training_params, tmp_path):
    params = {**training_params, "freeze": {"vision": 5, "fusion": 2}, "max_steps": 8, "checkpoint_every": 3}
    _, reference = _run(train_setup, {**params, "checkpoint_dir": str(tmp_path / "a")})
    interrupted = {**params, "checkpoint_dir": str(tmp_path / "b")}
    with pytest.raises(Interrupt):
        _run(train_setup, interrupted, adapter=StopAt(4))  # checkpoint at 3, frozen vision
    _, resumed = _run(train_setup, interrupted)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_layer_decay_scales_each_block_of_a_tower_on_top_of_group_lr_and_the_outer_loop(train_setup, training_params):
    config, _, _ = train_setup
    model = build_model(ModelConfig.from_dict(config))
    cfg = TrainConfig.from_dict({**training_params, "layer_decay": 0.5, "group_lr": {"text": 2.0}})
    optimizer = make_optimizer(model, cfg)
    base = set_learning_rates(optimizer, cfg, 10, 100, {"text": 3.0})
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    depth = len(model.text.blocks)
    for name, p in model.text.named_parameters():
        if name.startswith("blocks."):
            factor = 0.5 ** (depth - int(name.split(".")[1]))
        elif name.startswith("norm."):
            factor = 1.0
        else:
            factor = 0.5 ** (depth + 1)
        assert lr_of[id(p)] == pytest.approx(base * 2.0 * 3.0 * factor), name
    assert all(lr_of[id(p)] == pytest.approx(base) for p in model.heads.parameters())
    assert sorted({g["name"] for g in optimizer.param_groups}) == ["fusion", "heads", "text", "vision"]


def test_layer_decay_leaves_early_fusion_alone(train_setup, training_params):
    config, _, _ = train_setup
    config = {**config, "fusion": {**config["fusion"], "kind": "early"}}
    model = build_model(ModelConfig.from_dict(config))
    optimizer = make_optimizer(model, TrainConfig.from_dict({**training_params, "layer_decay": 0.5}))
    assert {g["lr_scale"] for g in optimizer.param_groups if g["name"] in ("fusion", "heads")} == {1.0}
    assert len({g["lr_scale"] for g in optimizer.param_groups if g["name"] == "vision"}) > 2


def test_without_layer_decay_the_groups_are_one_per_component_and_decay(train_setup, training_params):
    config, _, _ = train_setup
    model = build_model(ModelConfig.from_dict(config))
    groups = make_optimizer(model, TrainConfig.from_dict(training_params)).param_groups
    assert [(g["name"], g["weight_decay"] > 0) for g in groups] == [
        (name, decays) for name in ("vision", "text", "fusion", "heads") for decays in (True, False)
    ]
    assert set(layer_scales(model.fusion, 0.5).values()) == {1.0}  # not a tower: no decay


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"freeze": {"decoder": 3}}, "unknown component"),
        ({"freeze": {"vision": -1}}, "step it unfreezes at"),
        ({"freeze": {"vision": 10}, "world_size": 2}, "world_size: 1"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"layer_decay": 0.8, "optimizer": "prodigy", "controller": {"method": "fixed"}}, "layer_decay: 1"),
    ],
)
def test_bad_fine_tuning_settings_say_what_to_fix(training_params, change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**training_params, **change})


def test_frozen_reads_steps_and_booleans():
    assert frozen(True, 10**9) and not frozen(False, 0)
    assert frozen(5, 4) and not frozen(5, 5) and not frozen(0, 0)


def test_the_double_loop_keeps_its_scales_on_top_of_a_frozen_then_unfrozen_tower(train_setup, training_params):
    from multimodal_doubleloop.training.controller import build_adapter

    config, split, store = train_setup
    cfg = TrainConfig.from_dict({
        **training_params, "epochs": 5, "checkpoint_every": 0, "freeze": {"vision": 12},
        "controller": {"method": "double_loop", "every": 4, "measure_every": 2, "max_log_step": 0.35},
    })
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config))
    adapter = build_adapter(cfg.controller, list(model.parameter_groups(trainable_only=False)), cfg.warmup_steps)
    vision = adapter.groups.index("vision")
    state = train(model, split, None, store, cfg, {"model": config, "training": cfg.to_dict()}, TaskSet.answer_only(), adapter)
    assert state.step > 16 and not any(r["fallback"] for r in adapter.trace)
    frozen = [r for r in adapter.trace if 4 < r["step"] <= 12]
    # while frozen: the meter sees no vision statistics, so its scale does not move ...
    assert frozen and len({r["lr_scale/vision"] for r in frozen}) == 1
    # ... and afterwards the group is adapted like the others, from finite normalisers
    assert torch.isfinite(adapter.norm_mean[vision]).all()
    assert all(torch.isfinite(torch.tensor(r["lr_scale/vision"])) for r in adapter.trace)
    # a window without a group's statistics leaves its normalisers and reads it as the mean
    n, before = len(adapter.groups), adapter.norm_mean.clone()
    stats = {"log_grad_norm": torch.full((n,), 3.0, dtype=torch.float64),
             "log_update_ratio": torch.full((n,), -2.0, dtype=torch.float64),
             "lr_cosine": torch.zeros(n, dtype=torch.float64),
             "count": torch.tensor([0.0 if i == vision else 2.0 for i in range(n)], dtype=torch.float64)}
    features = adapter._features(stats)
    assert torch.equal(adapter.norm_mean[vision], before[vision]) and (features[vision, :5] == 0).all()
    assert not torch.equal(adapter.norm_mean[(vision + 1) % n], before[(vision + 1) % n])
