import copy
import io
import math

import pytest
import torch
from torch import nn

from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.data.images import image_store
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.controller import (
    ControllerConfig,
    DoubleLoopController,
    HypergradientDescent,
    build_adapter,
    decision_history,
    hypergradient,
)
from multimodal_doubleloop.training.controller.hypergradient import HypergradientMeter
from multimodal_doubleloop.training.loop import train
from multimodal_doubleloop.training.optim import make_optimizer

BOUND = math.log(4.0)


class Tiny(nn.Module):
    """Two named components, as `MultimodalModel.components` gives them."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8, dtype=dtype)
        self.head = nn.Linear(8, 3, dtype=dtype)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))

    def components(self):
        return {"vision": self.body, "heads": self.head}

    def parameter_groups(self, trainable_only: bool = True):
        return {name: list(part.parameters()) for name, part in self.components().items()}


def _batch(i: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 6, generator=g, dtype=dtype)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _loss(model, i: int) -> torch.Tensor:
    x, y = _batch(i, next(model.parameters()).dtype)
    return nn.functional.cross_entropy(model(x), y)


def _optimizer(model, lr=0.05, wd=0.1):
    return make_optimizer(model, TrainConfig(lr=lr, weight_decay=wd))


def _drive(adapter, model, opt, steps: int, lr: float, poison_at: int | None = None, start: int = 0) -> None:
    """The loop's call order: backward, before_step, set lr/wd from the scales, step, observe."""
    for step in range(start, steps):
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, step)
        loss.backward()
        if step == poison_at:
            model.body.weight.grad[0, 0] = float("nan")
        adapter.before_step(step, opt)
        scales, wd_scales = adapter.scales(), adapter.weight_decay_scales()
        for group in opt.param_groups:
            group["lr"] = lr * scales[group["name"]]
            group["weight_decay"] = group["base_wd"] * wd_scales[group["name"]]
        finite = step != poison_at
        if finite:
            opt.step()
        adapter.observe(step + 1, {"loss": loss.item(), "accuracy": 0.5, "finite": finite}, opt)


@pytest.mark.parametrize("steps_on_host", [True, False])
@pytest.mark.parametrize("uneven_steps", [False, True])
@pytest.mark.parametrize("field, key", [("hypergradient", "lr"), ("wd_hypergradient", "weight_decay")])
def test_hypergradient_matches_finite_difference(field, key, uneven_steps, steps_on_host, monkeypatch):
    """dL(theta_{t+1})/d log(lr_g or wd_g) from the optimiser state equals a central
    difference of the loss after a perturbed AdamW step; also when a parameter of a
    group has taken fewer steps (no gradient in one), so bias corrections differ, with
    step counts read on the host (CPU) or kept on the device (accelerators)."""
    monkeypatch.setattr(hypergradient, "steps_on_host", lambda device: steps_on_host)
    model = Tiny(torch.float64)
    opt = _optimizer(model)
    for i in range(3):  # non-trivial Adam moments and bias corrections
        opt.zero_grad()
        _loss(model, i).backward()
        if uneven_steps and i == 1:
            model.head.bias.grad = None  # this step skips the bias: its step count lags
        opt.step()
    if uneven_steps:
        assert float(opt.state[model.head.bias]["step"]) == 2 and float(opt.state[model.head.weight]["step"]) == 3
    before_model, before_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    def loss_after_step(group_name: str, log_factor: float) -> float:
        model.load_state_dict(before_model)
        opt.load_state_dict(copy.deepcopy(before_opt))  # AdamW steps its "step" tensor in place
        for group in opt.param_groups:
            if group["name"] == group_name:
                group[key] *= math.exp(log_factor)
        opt.zero_grad()
        _loss(model, 3).backward()
        opt.step()
        return _loss(model, 4).item()

    loss_after_step("none", 0.0)  # the unperturbed step t
    opt.zero_grad()
    _loss(model, 4).backward()  # g_{t+1}
    meter = HypergradientMeter(["vision", "heads"])
    meter.measure(opt)
    measured = meter.read()[field]
    eps = 1e-4
    for i, name in enumerate(["vision", "heads"]):
        fd = (loss_after_step(name, eps) - loss_after_step(name, -eps)) / (2 * eps)
        assert abs(measured[i].item()) > 1e-6  # a real signal, not 0 == 0
        assert measured[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("lr", [1e-6, 5.0])
@pytest.mark.parametrize("method", ["hypergradient", "double_loop"])
def test_scales_stay_within_bounds(method, lr):
    """Far too small / large base LRs push the scales hard; they never leave [1/4, 4]."""
    cfg = ControllerConfig(method=method, every=2, measure_every=1, hypergradient_lr=0.5, meta_lr=0.5, scale_reg=0.0)
    model = Tiny()
    opt = _optimizer(model, lr=lr)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=2)
    _drive(adapter, model, opt, steps=60, lr=lr)
    scales = [r[k] for r in adapter.trace for k in r if "_scale/" in k]
    assert scales and all(0.25 - 1e-12 <= s <= 4.0 + 1e-12 for s in scales)
    moved = max(abs(math.log(s)) for s in scales)
    assert moved > 0.3, f"{method} did not react to base lr {lr}"


def test_tiny_lr_is_raised_by_hypergradient_descent():
    cfg = ControllerConfig(method="hypergradient", every=2, measure_every=1, hypergradient_lr=0.1)
    model = Tiny()
    opt = _optimizer(model, lr=1e-5)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=40, lr=1e-5)
    assert all(s > 2.0 for s in adapter.scales().values())


@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("poison", ["gradient", "loss"])
@pytest.mark.parametrize("method", ["hypergradient", "double_loop"])
def test_non_finite_statistics_hold_the_anchor(method, poison, calibrated):
    """A genuinely non-finite window falls back to the anchor: the calibrated scales
    (scale 1 only without calibration), never to the uncorrected base LR."""
    cfg = ControllerConfig(method=method, every=4, measure_every=1, hypergradient_lr=0.2, meta_lr=0.2,
                           target_update_ratio=0.01 if calibrated else 0.0, max_log_scale=math.log(1e4))
    model = Tiny()
    opt = _optimizer(model, lr=1e-5)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=21, lr=1e-5)  # the decision at step 20 moves the scales
    anchor = {g: math.exp(float(a)) for g, a in zip(["vision", "heads"], adapter.anchor, strict=True)}
    assert any(abs(s - anchor[g]) > 1e-3 for g, s in adapter.scales().items())
    assert (min(anchor.values()) > 10) == calibrated  # 1e-5 is far too small: calibration raises it
    for step in (21, 22, 23):
        opt.zero_grad()
        _loss(model, step).backward()
        bad = step == 22
        if bad and poison == "gradient":
            model.head.bias.grad[0] = float("inf")
        adapter.before_step(step, opt)
        if not bad:
            opt.step()
        loss = float("nan") if bad and poison == "loss" else 1.0
        adapter.observe(step + 1, {"loss": loss, "accuracy": 0.5, "finite": not bad}, opt)
    opt.zero_grad()
    _loss(model, 24).backward()
    adapter.before_step(24, opt)  # window end after the bad step
    assert adapter.scales() == pytest.approx(anchor, rel=1e-12)
    assert adapter.weight_decay_scales() == {"vision": 1.0, "heads": 1.0}
    assert adapter.trace[-1]["fallback"] == 1.0


@pytest.mark.parametrize("loss", [0.0, 1e-12])
def test_a_loss_of_zero_is_a_statistic_not_a_fallback(loss):
    cfg = ControllerConfig(method="double_loop", every=4, measure_every=1)
    model = Tiny()
    opt = _optimizer(model)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    for step in range(13):
        opt.zero_grad()
        _loss(model, step).backward()
        adapter.before_step(step, opt)
        opt.step()
        adapter.observe(step + 1, {"loss": loss, "accuracy": 1.0, "finite": True}, opt)
    assert [r["fallback"] for r in adapter.trace] == [0.0, 0.0, 0.0]
    assert all(math.isfinite(r["meta_log_loss"]) for r in adapter.trace)


def test_calibrated_only_calibrates_then_never_moves():
    cfg = ControllerConfig(method="calibrated", every=4, measure_every=2, target_update_ratio=0.01,
                           max_log_scale=math.log(1e4))
    model = Tiny()
    opt = _optimizer(model, lr=1e-5)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=25, lr=1e-5)
    first = {k: v for k, v in adapter.trace[0].items() if k.startswith("lr_scale/")}
    assert adapter.calibrated and all(v > 10 for v in first.values())
    assert all({k: r[k] for k in first} == first for r in adapter.trace)
    with pytest.raises(ValueError, match="target_update_ratio"):
        ControllerConfig(method="calibrated")


class _NegativeTotal(TaskSet):
    """Answer classification whose weighted total is shifted by -10 (as an
    uncertainty-weighted total turns negative once the tasks' losses are small): the
    objective the controller reads stays the task's own loss."""

    def step(self, model, batch):
        result = super().step(model, batch)
        terms = {**result.terms, "offset": result.terms["ce"].new_tensor(-10.0)}
        return type(result)(terms, result.count, result.hits, result.objective)


def test_a_negative_weighted_total_is_no_fallback(samples, images, tokenized, model_params, tmp_path):
    from multimodal_doubleloop.models import resolve_model_config
    from multimodal_doubleloop.tasks.classification import ClassificationTask
    from multimodal_doubleloop.tasks.config import TaskConfig

    config = resolve_model_config(model_params, 200, 16, len(tokenized["answer_vocab"]))
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    cfg = TrainConfig(
        epochs=3, images_per_batch=2, lr=1e-5, warmup_steps=2, checkpoint_dir=str(tmp_path), checkpoint_every=0,
        progress_bar=False, log_every=1,
        controller={"method": "double_loop", "every": 4, "measure_every": 2, "target_update_ratio": 0.01,
                    "max_log_scale": 6.9, "max_log_step": 0.35},
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config))
    adapter = build_adapter(cfg.controller, list(model.parameter_groups()), cfg.warmup_steps)
    tasks = _NegativeTotal([ClassificationTask("answer", TaskConfig(), [])])
    state = train(model, split, None, image_store(images), cfg, {}, tasks, adapter)
    assert max(r["loss"] for r in state.step_log) < 0  # the loss the loop logs is the weighted total
    windows = [r for r in adapter.trace if r["step"] % 4 == 0]
    assert len(windows) >= 5 and not any(r["fallback"] for r in adapter.trace)
    assert all(math.isfinite(r["meta_log_loss"]) and r["meta_log_loss"] > 0 for r in windows[1:])
    assert all(r["lr_scale/vision"] > 10 for r in adapter.trace)  # the calibrated LR is kept throughout


def test_frozen_during_warmup():
    cfg = ControllerConfig(method="double_loop", every=2, measure_every=1, meta_lr=0.5)
    model = Tiny()
    opt = _optimizer(model, lr=1e-5)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=10)
    _drive(adapter, model, opt, steps=11, lr=1e-5)
    assert [r["step"] for r in adapter.trace] == [2, 4, 6, 8, 10]
    assert all(r["lr_scale/vision"] == 1.0 for r in adapter.trace[:4])


@pytest.mark.parametrize("cls", [HypergradientDescent, DoubleLoopController])
def test_state_dict_round_trips_through_torch_save(cls):
    cfg = ControllerConfig(every=3, measure_every=1)
    model, other = Tiny(), Tiny()
    a, b = cls(cfg, ["vision", "heads"], 0), cls(cfg, ["vision", "heads"], 0)
    opt_a = _optimizer(model, lr=1e-4)
    _drive(a, model, opt_a, steps=10, lr=1e-4)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    b.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    other.load_state_dict(model.state_dict())
    opt_b = _optimizer(other, lr=1e-4)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # AdamW steps "step" in place
    _drive(a, model, opt_a, steps=19, lr=1e-4, start=10)
    _drive(b, other, opt_b, steps=19, lr=1e-4, start=10)
    assert a.trace == b.trace and len(a.trace) == 6


@pytest.mark.parametrize("method", ["hypergradient", "double_loop"])
def test_resume_from_checkpoint_gives_identical_decisions(
    method, samples, images, tokenized, model_params, tmp_path
):
    """An interrupted run resumed from its checkpoint decides exactly as an
    uninterrupted one (controller state, optimiser and meter all restored)."""
    answer_vocab, encoded = tokenized["answer_vocab"], tokenized["encoded_texts"]
    config = resolve_model_config(model_params, 200, encoded["input_ids"].shape[1], len(answer_vocab))
    split = encoded_split(samples, encoded, images["image_ids"], answer_vocab, "train")
    store = image_store(images)

    class Crash(RuntimeError):
        pass

    class CrashAt:
        """Delegates to the adapter and dies before step `at`, like a killed job."""

        def __init__(self, adapter, at):
            self.adapter, self.at = adapter, at

        def before_step(self, step, optimizer):
            if step == self.at:
                raise Crash(step)
            self.adapter.before_step(step, optimizer)

        def __getattr__(self, name):
            return getattr(self.adapter, name)

    def run(directory: str, crash_at: int | None = None):
        cfg = TrainConfig(
            epochs=2, images_per_batch=2, lr=3e-3, warmup_steps=2, max_steps=14,
            checkpoint_dir=directory, checkpoint_every=5, progress_bar=False,
            controller={"method": method, "every": 2, "measure_every": 1, "meta_lr": 0.05},
        )
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_dict(config))
        adapter = build_adapter(cfg.controller, list(model.parameter_groups()), cfg.warmup_steps)
        wrapped = adapter if crash_at is None else CrashAt(adapter, crash_at)
        train(model, split, None, store, cfg, {"training": cfg.to_dict()}, TaskSet.answer_only(), wrapped)
        return adapter.trace, model.state_dict()

    straight, weights = run(str(tmp_path / "straight"))
    with pytest.raises(Crash):
        run(str(tmp_path / "resumed"), crash_at=7)  # the newest checkpoint is step 5
    resumed, resumed_weights = run(str(tmp_path / "resumed"))
    assert [r["step"] for r in straight] == [2, 4, 6, 8, 10, 12]
    assert resumed == straight
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    assert any(abs(r["lr_scale/vision"] - 1.0) > 1e-6 for r in straight)


def test_decision_history_is_mlflow_metric_history():
    trace = [{"step": 4, "lr_scale/text": 1.5, "meta_loss": float("nan")}, {"step": 8, "lr_scale/text": 2.0}]
    assert decision_history(trace) == {
        "controller/lr_scale/text": [{"step": 4, "value": 1.5}, {"step": 8, "value": 2.0}]
    }


def test_config_fails_loudly():
    with pytest.raises(ValueError, match="method='lstm'"):
        ControllerConfig(method="lstm")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['evry'\] in training.controller"):
        TrainConfig(controller={"evry": 3})
    with pytest.raises(ValueError, match="measure_every=4"):
        ControllerConfig(every=10, measure_every=4)
    with pytest.raises(ValueError, match="every=0"):
        TrainConfig.from_dict({"controller": {"every": 0}})


def test_step_mode_moves_gradually_and_reaches_beyond_the_absolute_bound():
    """max_log_step > 0: each decision moves a log scale by at most that much, scales
    stay within max_log_scale, and a far too small LR is raised past x4 over windows."""
    step, bound = 0.5, math.log(1000.0)
    cfg = ControllerConfig(
        method="double_loop", every=2, measure_every=1, meta_lr=0.2, scale_reg=0.0,
        max_log_scale=bound, max_log_step=step, max_log_wd_scale=0.0,
    )
    model = Tiny()
    opt = _optimizer(model, lr=1e-5)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=2)
    _drive(adapter, model, opt, steps=80, lr=1e-5)
    logs = [[math.log(r[f"lr_scale/{g}"]) for g in ("vision", "heads")] for r in adapter.trace]
    assert all(abs(a) <= bound + 1e-9 for row in logs for a in row)
    assert all(abs(a - b) <= step + 1e-9 for prev, row in zip(logs, logs[1:], strict=False) for a, b in zip(prev, row, strict=True))
    assert max(adapter.scales().values()) > 4.0


@pytest.mark.parametrize("method", ["hypergradient", "double_loop"])
def test_calibration_makes_the_base_lr_irrelevant(method):
    """With `target_update_ratio`, the first measured step (step `measure_every`)
    rescales every group so that the update/parameter ratio meets the target: base LRs
    1000x apart end up at about the same effective LR, and the next window's measured
    ratio is near the target."""
    target = 0.01
    cfg = ControllerConfig(
        method=method, every=4, measure_every=2, max_log_scale=math.log(1e5),
        target_update_ratio=target, max_log_wd_scale=0.0,
    )
    effective, ratios = {}, {}
    for lr in (1e-5, 1e-2):
        model = Tiny()
        opt = _optimizer(model, lr=lr)
        adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=100)  # frozen after calibrating
        _drive(adapter, model, opt, steps=9, lr=lr)
        first, second = adapter.trace[0], adapter.trace[1]
        assert adapter.calibrated and [first["step"], second["step"]] == [2, 4]
        effective[lr] = {g: lr * first[f"lr_scale/{g}"] for g in ("vision", "heads")}
        ratios[lr] = {g: second[f"update_ratio/{g}"] for g in ("vision", "heads")}
        assert second["lr_scale/vision"] == first["lr_scale/vision"]  # held: warm-up freezes the rest
    for g in ("vision", "heads"):
        assert 0.5 < effective[1e-5][g] / effective[1e-2][g] < 2.0, effective
        assert all(target / 3 < ratios[lr][g] < target * 3 for lr in ratios), ratios


def test_calibration_waits_for_a_finite_window_and_survives_a_checkpoint():
    cfg = ControllerConfig(method="double_loop", every=2, measure_every=1, target_update_ratio=0.01)
    model = Tiny()
    opt = _optimizer(model, lr=1e-4)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=3, lr=1e-4, poison_at=1)  # the first window is not finite
    assert not adapter.calibrated and adapter.scales() == {"vision": 1.0, "heads": 1.0}
    _drive(adapter, model, opt, steps=5, lr=1e-4, start=3)
    assert adapter.calibrated and all(s > 2.0 for s in adapter.scales().values())  # 1e-4 is far too small here
    restored = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    restored.load_state_dict(torch.load(io.BytesIO(_saved(adapter.state_dict())), weights_only=True))
    assert restored.calibrated and torch.equal(restored.anchor, adapter.anchor)


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _meta_rows(trace: list[dict]) -> list[dict]:
    return [r for r in trace if "meta_forecast" in r]


def test_meta_forecast_is_scored_against_the_loss_horizon_windows_later():
    """Each decision forecasts the change in log loss `meta_horizon` windows ahead; the
    logged error is that forecast, as made, minus the change that followed."""
    cfg = ControllerConfig(method="double_loop", every=2, measure_every=1, meta_lr=0.05, meta_horizon=3)
    model = Tiny()
    opt = _optimizer(model, lr=0.02)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=41, lr=0.02)
    rows = _meta_rows(adapter.trace)
    assert len(rows) == 20  # decisions at steps 2, 4, ..., 40
    scored = [i for i, r in enumerate(rows) if "meta_prediction_error" in r]
    assert scored == list(range(3, 20))  # the first outcome arrives three windows on
    for i in scored:
        realised = rows[i]["meta_log_loss"] - rows[i - 3]["meta_log_loss"]
        assert rows[i]["meta_prediction_error"] == pytest.approx(rows[i - 3]["meta_forecast"] - realised, abs=1e-12)
    assert len(adapter.pending) == 3  # forecasts still awaiting their outcome
    assert adapter.meta_updates == 17


@pytest.mark.parametrize("min_delta, stops_at", [(0.5, 8), (-10.0, None)])
def test_early_stop_after_patience_decisions_forecasting_a_plateau(min_delta, stops_at):
    """At a tiny LR the loss does not move, so no forecast promises a 50% drop: with
    patience 2 the run is told to stop at the second counted decision (step 8: the
    meta head has learnt from two outcomes by step 6). A threshold no forecast can
    miss (-10: the loss would have to grow e^10-fold) never stops it."""
    cfg = ControllerConfig(
        method="double_loop", every=2, measure_every=1, meta_horizon=1,
        early_stop_patience=2, early_stop_min_delta=min_delta,
    )
    model = Tiny()
    opt = _optimizer(model, lr=1e-7)
    adapter = build_adapter(cfg, ["vision", "heads"], warmup_steps=0)
    _drive(adapter, model, opt, steps=21, lr=1e-7)
    flags = {r["step"]: r["early_stop"] for r in adapter.trace}
    first = min((s for s, f in flags.items() if f == 1.0), default=None)
    assert first == stops_at
    assert adapter.stop_requested() == (stops_at is not None)


def test_controller_early_stop_ends_training_and_a_rerun_stays_stopped(
    samples, images, tokenized, model_params, tmp_path
):
    """Through the real loop, with the meta head forecasting the loss of the first two
    validation images: each held-out loss it is given is that batch's loss under the
    weights of that moment, the run ends at the step the controller stops it, and a
    resumed rerun trains no further."""
    from multimodal_doubleloop.data.batching import first_images
    from multimodal_doubleloop.training.evaluate import evaluate

    answer_vocab, encoded = tokenized["answer_vocab"], tokenized["encoded_texts"]
    config = resolve_model_config(model_params, 200, encoded["input_ids"].shape[1], len(answer_vocab))
    split = encoded_split(samples, encoded, images["image_ids"], answer_vocab, "train")
    val = encoded_split(samples, encoded, images["image_ids"], answer_vocab, "val")
    assert len(val)
    store = image_store(images)
    cfg = TrainConfig(
        epochs=5, images_per_batch=2, lr=3e-3, warmup_steps=2, max_steps=60,
        checkpoint_dir=str(tmp_path), checkpoint_every=5, progress_bar=False,
        controller={"method": "double_loop", "every": 2, "measure_every": 1, "meta_images": 2, "meta_horizon": 1,
                    "early_stop_patience": 2, "early_stop_min_delta": 10.0},
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config))

    class Checked:
        """Recomputes each held-out loss the loop hands over."""

        def __init__(self, adapter):
            self.adapter, self.seen = adapter, []

        def observe_validation(self, loss):
            expected = evaluate(model, first_images(val, 2), store, cfg, TaskSet.answer_only())["loss"]
            assert loss == pytest.approx(expected, rel=1e-6)
            self.seen.append(loss)
            self.adapter.observe_validation(loss)

        def __getattr__(self, name):
            return getattr(self.adapter, name)

    adapter = build_adapter(cfg.controller, list(model.parameter_groups()), cfg.warmup_steps)
    checked = Checked(adapter)
    state = train(model, split, val, store, cfg, {"training": cfg.to_dict()}, TaskSet.answer_only(), checked)
    # Decisions every 2 steps; learned from step 2 (warm-up), first outcome at step 4,
    # counting from step 6 (two outcomes learnt), the second plateau at step 8.
    assert state.stopped_early_at == state.step == 8
    assert state.history[-1]["early_stop"] == 1.0
    assert len(checked.seen) == 4  # window ends at steps 2, 4, 6, 8
    assert [r["meta_log_loss"] for r in adapter.trace] == pytest.approx([math.log(v) for v in checked.seen])

    torch.manual_seed(0)
    again = build_model(ModelConfig.from_dict(config))
    rerun = train(again, split, val, store, cfg, {"training": cfg.to_dict()},
                  TaskSet.answer_only(), build_adapter(cfg.controller, list(again.parameter_groups()), cfg.warmup_steps))
    assert rerun.step == 8 and rerun.stopped_early_at == 8 and rerun.history == state.history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_meta_images_without_a_validation_split_fails_before_training(samples, images, tokenized, model_params, tmp_path):
    answer_vocab, encoded = tokenized["answer_vocab"], tokenized["encoded_texts"]
    config = resolve_model_config(model_params, 200, encoded["input_ids"].shape[1], len(answer_vocab))
    split = encoded_split(samples, encoded, images["image_ids"], answer_vocab, "train")
    cfg = TrainConfig(max_steps=4, checkpoint_dir=str(tmp_path), progress_bar=False,
                      controller={"method": "double_loop", "meta_images": 4})
    model = build_model(ModelConfig.from_dict(config))
    adapter = build_adapter(cfg.controller, list(model.parameter_groups()), cfg.warmup_steps)
    with pytest.raises(ValueError, match="meta_images=4 needs a validation split"):
        train(model, split, None, image_store(images), cfg, {}, TaskSet.answer_only(), adapter)


def test_meta_head_closes_meta_step_of_its_error_per_outcome():
    """Normalised LMS: for one LSTM state, each outcome moves the forecast `meta_step`
    of the way to it, so after n outcomes it has closed 1 - (1 - step)^n; Adam, which
    trains the LSTM and the scale outputs, never touches the meta head."""
    cfg = ControllerConfig(method="double_loop", meta_step=0.3)
    adapter = DoubleLoopController(cfg, ["vision", "heads"], 0)
    head = adapter.net.meta
    feature = torch.linspace(-0.5, 0.8, cfg.hidden, dtype=torch.float64)
    assert float(head(feature).detach()) == 0.0  # forecasts no change before any outcome
    for n in range(1, 6):
        adapter._learn_forecast(feature, -0.2)
        assert float(head(feature).detach()) == pytest.approx(-0.2 * (1 - 0.7**n), abs=1e-12)
    adam = {id(p) for group in adapter.opt.param_groups for p in group["params"]}
    assert not adam & {id(p) for p in head.parameters()}
    assert len(adam) == sum(1 for _ in adapter.net.parameters()) - 2
