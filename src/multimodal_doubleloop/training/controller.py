"""The outer loop of double-loop learning: adapters that rescale per-group LR and WD.

Two adapters implement the loop's `Adapter` protocol:

- `HypergradientDescent`: plain hypergradient descent (Baydin et al. 2018), the
  multiplicative rule on a per-group log-scale, a_g <- a_g - beta * cos_g per step,
  where cos_g is the normalised one-step hypergradient dL/d log lr_g.
- `DoubleLoopController`: every `every` inner steps a small LSTM reads running-
  normalised per-group statistics and sets lr_g = base(t) * exp(a_g) (absolute mode:
  a_g = anchor_g + bound * tanh(o_g); step mode: the window's hypergradient picks the
  direction of a move, the LSTM its size), and a weight-decay multiplier the same
  way. It is trained online: the window's hypergradients are the gradient of the
  inner loss with respect to its outputs, plus a pull toward the anchor (Wu et al.
  2018: one-step objectives prefer too-small learning rates), plus a meta head that
  forecasts the change in log loss `meta_horizon` windows ahead: the loss of a fixed
  held-out batch of validation images (`meta_images`), or the training-loss EMA. Its
  forecast error is logged, and the forecast can stop the run on a plateau
  (`early_stop_patience`).

Calibration (`target_update_ratio` > 0): at the first measured step, early in
warm-up, both adapters multiply every group's scale by one factor so that the
update/parameter ratio, projected to the schedule's peak, meets the target. AdamW's
update size does not depend on the gradient's scale, so that ratio is proportional
to the LR and independent of the loss: one measurement turns a base LR that is 100x
off into the LR the target asks for, before a too-large LR has done harm. The
calibrated scales are the anchor (scale 1 without calibration).

Both make no learned decision during warm-up (calibration is a measurement, not a
decision), fall back to scale 1 for a window whose statistics are not finite, do
their host work once per window, and keep everything that decides the next scales
in `state_dict` (exact resume).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.strict import build
from .hypergradient import HypergradientMeter

logger = logging.getLogger(__name__)

METHODS = ("fixed", "hypergradient", "double_loop")
# Controller inputs per group, in order. The first five are running-normalised; the
# last three are already bounded and enter as they are.
FEATURES = (
    "log_loss",  # log of the training-loss EMA (shared by all groups)
    "loss_slope",  # change of log_loss over the last window
    "accuracy",  # training-accuracy EMA
    "log_grad_norm",  # window mean, after AMP unscaling
    "log_update_ratio",  # window mean of log |update| / |param|
    "lr_cosine",  # window mean of -cos(g_{t+1}, last update direction) = normalised hypergradient
    "scale",  # current a_g / bound
    "progress",  # t / T
)
NORMALISED = 5


@dataclass
class ControllerConfig:
    method: str = "fixed"  # fixed | hypergradient | double_loop
    every: int = 100  # inner steps per outer-loop decision (fewer at CPU scale)
    # Measure the hypergradient on every k-th step only: an unbiased subsample of the
    # window. One measurement costs about an optimiser step of memory traffic, ~8% of
    # a CPU-preset step; 4 keeps the controller near 2% there. 1 = Baydin's every step.
    measure_every: int = 4
    max_log_scale: float = math.log(4.0)  # |a_g| bound: LR multiplier within [1/4, 4]
    max_log_wd_scale: float = math.log(4.0)  # same for weight decay (double_loop); 0 = keep WD fixed
    # double_loop: 0 = each decision sets a = max_log_scale * tanh(o) (absolute); > 0 =
    # step mode: each decision moves a by at most this much, against the window's
    # hypergradient, the network setting the gain (a = a_prev - step * tanh(e^o cos)),
    # so a wide max_log_scale is reached gradually and from evidence.
    max_log_step: float = 0.0
    hypergradient_lr: float = 0.03  # beta of plain hypergradient descent, per step on log lr
    hidden: int = 32  # LSTM width
    meta_lr: float = 0.02  # Adam LR of the controller's LSTM and scale outputs
    # Step of the meta head's normalised least-mean-squares update (0 < step < 2): each
    # outcome moves the forecast for that decision's features this fraction of the way
    # to what happened (Adam's fixed-size steps made it jitter by more than the changes
    # it forecasts).
    meta_step: float = 0.1
    scale_reg: float = 0.1  # weight of (a_g - anchor_g)^2 (pull toward the anchor: scale 1 uncalibrated)
    # Calibration (0 = off): at the first measured step (step `measure_every`, early in
    # warm-up), multiply every group's scale by one factor so that the update/parameter
    # ratio (geometric mean over the groups), projected to the schedule's peak, is this
    # per step; those scales become the anchor the pull acts toward. Adam's update size
    # does not depend on the gradient's scale, so the ratio is a base-LR-free unit: a
    # base LR 100x off is corrected at once, before a too-large LR has done harm or a
    # too-small one has wasted the warm-up.
    target_update_ratio: float = 0.0
    loss_ema: float = 0.9  # per-step EMA of training loss / accuracy fed to the controller
    norm_decay: float = 0.9  # per-window decay of the running feature normalisers
    seed: int = 0  # controller initialisation (private generator; training RNG untouched)
    # double_loop's meta head forecasts the change in log loss this many windows ahead.
    meta_horizon: int = 3
    # The loss it forecasts: 0 = the training-loss EMA (within the first epoch every
    # batch is unseen, so that is a held-out estimate); N > 0 = the loss of the first N
    # validation images (all their texts), scored at every window end (one forward
    # pass on N images per `every` steps).
    meta_images: int = 0
    # Early stopping on a plateau (0 = off): stop after this many decisions in a row
    # whose forecast improvement over the horizon (minus the forecast change in log
    # loss, about a relative drop) is below `early_stop_min_delta`, counted once the
    # meta head has learnt from as many realised forecasts.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"training.controller.method={self.method!r}: use one of {METHODS}")
        checks = {
            "every": self.every >= 1,
            "measure_every": self.measure_every >= 1 and self.every % self.measure_every == 0,
            "max_log_scale": self.max_log_scale > 0,
            "max_log_wd_scale": self.max_log_wd_scale >= 0,
            "max_log_step": self.max_log_step >= 0,
            "hypergradient_lr": self.hypergradient_lr > 0,
            "hidden": self.hidden >= 1,
            "meta_lr": self.meta_lr > 0,
            "meta_step": 0 < self.meta_step < 2,
            "scale_reg": self.scale_reg >= 0,
            "target_update_ratio": 0 <= self.target_update_ratio < 1,
            "loss_ema": 0 <= self.loss_ema < 1,
            "norm_decay": 0 <= self.norm_decay < 1,
            "meta_horizon": self.meta_horizon >= 1,
            "meta_images": self.meta_images >= 0,
            "early_stop_patience": self.early_stop_patience >= 0,
            "early_stop_min_delta": math.isfinite(self.early_stop_min_delta),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "training.controller: out-of-range value(s) "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )

    @classmethod
    def from_dict(cls, params: dict) -> ControllerConfig:
        return build(cls, params, "training.controller")

    def to_dict(self) -> dict:
        return asdict(self)


def build_adapter(cfg: ControllerConfig, groups: list[str], warmup_steps: int):
    """The adapter for `cfg.method` over the model's parameter groups (None for fixed)."""
    if cfg.method == "fixed":
        return None
    if cfg.method == "hypergradient":
        return HypergradientDescent(cfg, groups, warmup_steps)
    return DoubleLoopController(cfg, groups, warmup_steps)


class WindowStats:
    """What every adapter tracks between decisions: the hypergradient meter, loss and
    accuracy EMAs, progress, and whether the window saw only finite statistics."""

    def __init__(self, cfg: ControllerConfig, groups: list[str]):
        self.cfg = cfg
        self.meter = HypergradientMeter(groups)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        self.loss_ema, self.acc_ema = nan.clone(), nan.clone()  # device scalars between reads
        self.ok = torch.tensor(True)
        self.progress = 0.0
        self.loss = self.accuracy = float("nan")  # the EMAs as read at the last window end
        # The schedule multiplier of the last step taken (host float), and the sum of its
        # log over the steps whose update the meter measured in this window.
        self.lr_factor = float("nan")
        self.log_factor_sum, self.log_factor_count = 0.0, 0

    def observe(self, stats: dict) -> None:
        """Fold one step in, on the device (no host sync)."""
        loss = torch.as_tensor(stats["loss"]).double()
        acc = torch.as_tensor(stats["accuracy"]).double()
        good = torch.as_tensor(stats["finite"]) & torch.isfinite(loss) & (loss > 0)
        self.progress = float(stats.get("progress", self.progress))
        self.lr_factor = float(stats.get("lr_factor", float("nan")))
        self.ok = self.ok.to(good.device) & good
        d = self.cfg.loss_ema
        for name, value in (("loss_ema", loss), ("acc_ema", acc)):
            ema = getattr(self, name).to(value.device)
            new = torch.where(torch.isnan(ema), value, d * ema + (1 - d) * value)
            setattr(self, name, torch.where(good, new, ema))

    def measure(self, optimizer) -> None:
        """Measure the last step's hypergradient (and note the schedule it ran at)."""
        self.meter.measure(optimizer)
        if self.lr_factor > 0:  # NaN before the first step: nothing was measured
            self.log_factor_sum += math.log(self.lr_factor)
            self.log_factor_count += 1

    def close(self) -> tuple[dict, bool]:
        """The window's per-group means (one host sync) and whether all were finite;
        `log_lr_factor` is the mean log schedule multiplier of the measured steps."""
        stats = self.meter.read()
        ok_now, self.loss, self.accuracy = torch.stack(
            [self.ok.to(self.loss_ema.device).double(), self.loss_ema, self.acc_ema]
        ).tolist()
        ok = bool(ok_now) and all(bool(torch.isfinite(v).all()) for v in stats.values())
        ok = ok and math.isfinite(self.loss) and math.isfinite(self.accuracy)
        self.ok = torch.ones_like(self.ok)
        stats["log_lr_factor"] = self.log_factor_sum / max(self.log_factor_count, 1)
        self.log_factor_sum, self.log_factor_count = 0.0, 0
        return stats, ok

    def state_dict(self) -> dict:
        return {
            "meter": self.meter.state_dict(),
            "loss_ema": self.loss_ema.cpu().clone(),
            "acc_ema": self.acc_ema.cpu().clone(),
            "ok": self.ok.cpu().clone(),
            "progress": self.progress,
            "lr_factor": self.lr_factor,
            "log_factor": (self.log_factor_sum, self.log_factor_count),
        }

    def load_state_dict(self, state: dict) -> None:
        self.meter.load_state_dict(state["meter"])
        self.loss_ema, self.acc_ema = state["loss_ema"].clone(), state["acc_ema"].clone()
        self.ok, self.progress = state["ok"].clone(), state["progress"]
        self.lr_factor = state["lr_factor"]
        self.log_factor_sum, self.log_factor_count = state["log_factor"]


def _as_dict(groups: list[str], log_scales: torch.Tensor) -> dict[str, float]:
    return {g: math.exp(float(a)) for g, a in zip(groups, log_scales, strict=True)}


def _trace_row(step: int, groups, a, b, stats: dict, fallback: bool, **extra) -> dict:
    row = {"step": step, "fallback": float(fallback)}
    for i, g in enumerate(groups):
        row[f"lr_scale/{g}"] = math.exp(float(a[i]))
        row[f"wd_scale/{g}"] = math.exp(float(b[i]))
        cos = float(stats["lr_cosine"][i])
        row[f"lr_cosine/{g}"] = cos if math.isfinite(cos) else 0.0
        row[f"update_ratio/{g}"] = math.exp(float(stats["log_update_ratio"][i]))  # per step, |dtheta| / |theta|
    return {**row, **{k: v for k, v in extra.items() if math.isfinite(v)}}  # no NaN before the first meta step


def _check_state(state: dict, method: str, groups: list[str]) -> None:
    if state.get("method") != method:
        raise ValueError(f"checkpoint holds a {state.get('method')!r} adapter, not {method!r}")
    if list(state["groups"]) != groups:
        raise ValueError(f"controller state is for groups {state['groups']}, this model has {groups}")


class _ScaleAdapter:
    """What both adapters share: per-group log LR (a) and WD (b) scales, the window's
    statistics, the decision trace, and the loop's `Adapter` calls. Subclasses decide
    in `_window_end(step, stats, ok)`."""

    method = ""

    def __init__(self, cfg: ControllerConfig, groups: list[str], warmup_steps: int):
        self.cfg, self.groups, self.warmup_steps = cfg, list(groups), warmup_steps
        self.window = WindowStats(cfg, self.groups)
        self.a = torch.zeros(len(self.groups), dtype=torch.float64)  # log LR scale per group
        self.b = torch.zeros(len(self.groups), dtype=torch.float64)  # log WD scale per group
        # Where the pull toward a default scale acts: 0 (scale 1) until calibrated.
        self.anchor = torch.zeros(len(self.groups), dtype=torch.float64)
        self.calibrated = False
        self.trace: list[dict] = []
        self._publish()

    def _calibrates_at(self, step: int) -> bool:
        return bool(self.cfg.target_update_ratio) and step == self.cfg.measure_every

    def decides_at(self, step: int) -> bool:
        """Whether the scales may change before `step`: at window ends (multiples of
        `every`) and at the calibration step. A function of the step alone, so every
        rank asks at the same steps."""
        return step % self.cfg.every == 0 or self._calibrates_at(step)

    def _publish(self) -> None:
        """The multipliers as plain floats, read once per decision (not once per step)."""
        self._lr, self._wd = _as_dict(self.groups, self.a), _as_dict(self.groups, self.b)

    def scales(self) -> dict[str, float]:
        return dict(self._lr)

    def validation_images(self) -> int:
        """How many validation images the loop scores for `observe_validation` (0: none)."""
        return 0

    def wants_validation(self, step: int) -> bool:
        return False

    def observe_validation(self, loss: float) -> None:
        """The held-out loss at the current window end, before `before_step`."""

    def stop_requested(self) -> bool:
        """Whether the outer loop asks the run to stop (read at decision steps)."""
        return False

    def weight_decay_scales(self) -> dict[str, float]:
        return dict(self._wd)

    def observe(self, step: int, stats: dict, optimizer) -> None:
        self.window.observe(stats)

    def before_step(self, step: int, optimizer) -> None:
        """Measure the previous step's hypergradient; decide at window ends."""
        if step % self.cfg.measure_every == 0:
            self.window.measure(optimizer)
        window_end = step % self.cfg.every == 0
        if step == 0 or not (window_end or (self._calibrates_at(step) and not self.calibrated)):
            return
        stats, ok = self.window.close()
        if not ok:
            self.a.zero_()
            self.b.zero_()
            logger.warning("%s: non-finite statistics at step %d, scales reset to 1", self.method, step)
        elif self.cfg.target_update_ratio and not self.calibrated:  # a failed calibration retries at the next window end
            self._calibrate(step, stats)
        if window_end:
            self._window_end(step, stats, ok)
        else:  # the calibration step alone: recorded, no learned decision
            self.trace.append(_trace_row(step, self.groups, self.a, self.b, stats, fallback=not ok))
        self._publish()

    def _calibrate(self, step: int, stats: dict) -> None:
        """One common factor on every group's scale that puts the groups' update/
        parameter ratio (geometric mean over the groups), projected to the schedule's
        peak, at `target_update_ratio`: the ratio is proportional to the LR, so one
        measurement tells the LR that meets the target. The groups keep their LR
        ratios (the preset's balance); the outer loop adapts them from there."""
        measured = stats["count"] > 0
        if not bool(measured.any()):
            return
        peak_ratio = stats["log_update_ratio"] - stats["log_lr_factor"]  # log, at the schedule's peak
        shift = math.log(self.cfg.target_update_ratio) - float(peak_ratio[measured].mean())
        bound = self.cfg.max_log_scale
        self.anchor = (self.a + shift).clamp(-bound, bound)
        self.a = self.anchor.clone()
        self.calibrated = True
        logger.info(
            "%s: calibrated at step %d to update ratio %g: LR scales %s", self.method, step,
            self.cfg.target_update_ratio, {g: round(v, 4) for g, v in _as_dict(self.groups, self.a).items()},
        )

    def _window_end(self, step: int, stats: dict, ok: bool) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "groups": list(self.groups),
            "window": self.window.state_dict(),
            "a": self.a.clone(),
            "b": self.b.clone(),
            "anchor": self.anchor.clone(),
            "calibrated": self.calibrated,
            "trace": [dict(r) for r in self.trace],
        }

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.method, self.groups)
        self.window.load_state_dict(state["window"])
        self.a, self.b = state["a"].clone(), state["b"].clone()
        self.anchor, self.calibrated = state["anchor"].clone(), state["calibrated"]
        self.trace = [dict(r) for r in state["trace"]]
        self._publish()


class HypergradientDescent(_ScaleAdapter):
    """Plain HD, no LSTM: the multiplicative rule on each group's log LR scale (WD
    is not adapted)."""

    method = "hypergradient"

    def _window_end(self, step: int, stats: dict, ok: bool) -> None:
        if ok and step >= self.warmup_steps:
            # Baydin's per-step rule summed over the window's `every` steps (the mean of
            # the measured steps stands in for the unmeasured ones).
            delta = self.cfg.hypergradient_lr * stats["lr_cosine"] * self.cfg.every
            self.a = (self.a - delta).clamp(-self.cfg.max_log_scale, self.cfg.max_log_scale)
        self.trace.append(_trace_row(step, self.groups, self.a, self.b, stats, fallback=not ok))


class ControllerNet(nn.Module):
    """LSTM cell shared by the groups (one batch row each, plus a group one-hot)."""

    def __init__(self, n_groups: int, hidden: int):
        super().__init__()
        self.n_groups = n_groups
        self.cell = nn.LSTMCell(len(FEATURES) + n_groups, hidden)
        self.act = nn.Linear(hidden, 2)  # (o_lr, o_wd) per group
        self.meta = nn.Linear(hidden, 1)  # change in log loss `meta_horizon` windows ahead
        for layer in (self.act, self.meta):  # start at scale 1, forecasting no change
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, hc: tuple[torch.Tensor, torch.Tensor]):
        onehot = torch.eye(self.n_groups, dtype=x.dtype)
        h, c = self.cell(torch.cat([x, onehot], 1), hc)  # (G, H)
        return self.act(h), self.meta(h).mean(), (h, c)


class DoubleLoopController(_ScaleAdapter):
    """The LSTM meta-controller, trained online from accumulated hypergradients."""

    method = "double_loop"

    def __init__(self, cfg: ControllerConfig, groups: list[str], warmup_steps: int):
        super().__init__(cfg, groups, warmup_steps)
        n = len(self.groups)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = ControllerNet(n, cfg.hidden).double()
        # The meta head learns by its own rule (`_learn_forecast`), not by Adam.
        policy = [p for name, p in self.net.named_parameters() if not name.startswith("meta.")]
        self.opt = torch.optim.Adam(policy, lr=cfg.meta_lr)
        zeros = torch.zeros(n, cfg.hidden, dtype=torch.float64)
        self.hc = (zeros.clone(), zeros.clone())
        self.norm_mean = torch.zeros(n, NORMALISED, dtype=torch.float64)
        self.norm_sq = torch.zeros(n, NORMALISED, dtype=torch.float64)
        self.norm_weight = 0.0  # bias correction of the EMA normalisers
        # Inputs of the forward that chose the current scales: the next meta update
        # recomputes it (a few hundred flops) instead of holding a graph across steps.
        self.prev: dict | None = None
        self.last_log_loss = float("nan")
        self.meta_error = self.meta_loss = float("nan")
        # The meta head's forecasts awaiting their outcome, oldest first: the LSTM state
        # it was made from (mean over groups), the log loss then, and the forecast.
        self.pending: list[dict] = []
        self.val_log_loss = float("nan")  # log held-out loss at this window end (meta_images > 0)
        self.meta_updates = 0  # realised forecasts the meta head has learnt from
        self.plateau = 0  # consecutive decisions forecasting less than early_stop_min_delta

    def validation_images(self) -> int:
        return self.cfg.meta_images

    def wants_validation(self, step: int) -> bool:
        return self.cfg.meta_images > 0 and step > 0 and step % self.cfg.every == 0

    def observe_validation(self, loss: float) -> None:
        self.val_log_loss = math.log(loss) if loss > 0 and math.isfinite(loss) else float("nan")

    def stop_requested(self) -> bool:
        patience = self.cfg.early_stop_patience
        return bool(patience) and self.plateau >= patience

    def _meta_log_loss(self) -> float:
        """The log loss the meta head forecasts, at this window end."""
        return self.val_log_loss if self.cfg.meta_images else math.log(self.window.loss)

    def _window_end(self, step: int, stats: dict, ok: bool) -> None:
        forecast = float("nan")
        if ok:
            forecast = self._decide(stats, frozen=step < self.warmup_steps)
        else:
            self.prev = None  # this window's scales were not the network's choice
            self.pending.clear()  # nor are its losses outcomes to learn from
        stop = self.stop_requested()
        if stop:
            logger.info(
                "double_loop: early stop at step %d: %d decisions in a row forecast less than "
                "%g improvement over the next %d window(s)", step, self.plateau,
                self.cfg.early_stop_min_delta, self.cfg.meta_horizon,
            )
        self.trace.append(
            _trace_row(
                step, self.groups, self.a, self.b, stats, fallback=not ok,
                meta_prediction_error=self.meta_error, meta_loss=self.meta_loss,
                meta_forecast=forecast, meta_log_loss=self._meta_log_loss() if ok else float("nan"),
                early_stop=float(stop) if self.cfg.early_stop_patience else float("nan"),
            )
        )
        self.val_log_loss = float("nan")  # used once

    def _features(self, stats: dict) -> torch.Tensor:
        n = len(self.groups)
        log_loss = math.log(self.window.loss)
        slope = 0.0 if math.isnan(self.last_log_loss) else log_loss - self.last_log_loss
        raw = torch.stack(
            [
                torch.full((n,), log_loss, dtype=torch.float64),
                torch.full((n,), slope, dtype=torch.float64),
                torch.full((n,), self.window.accuracy, dtype=torch.float64),
                stats["log_grad_norm"],
                stats["log_update_ratio"],
            ],
            1,
        )  # (G, NORMALISED)
        d = self.cfg.norm_decay
        self.norm_mean = d * self.norm_mean + (1 - d) * raw
        self.norm_sq = d * self.norm_sq + (1 - d) * raw.square()
        self.norm_weight = d * self.norm_weight + (1 - d)
        mean = self.norm_mean / self.norm_weight
        var = (self.norm_sq / self.norm_weight - mean.square()).clamp_min(0)
        normalised = ((raw - mean) / (var + 1e-4).sqrt()).clamp(-5, 5)
        bounded = torch.stack(
            [
                stats["lr_cosine"].clamp(-1, 1),
                self.a / self.cfg.max_log_scale,
                torch.full((n,), self.window.progress, dtype=torch.float64),
            ],
            1,
        )
        return torch.cat([normalised, bounded], 1)  # (G, len(FEATURES))

    def _bounded(self, out: torch.Tensor, prev: dict):
        """The log scales the outputs choose, given the decision's record `prev` (the
        scales a0, b0 before it and the window's cosines). Absolute mode (max_log_step
        0): a = bound * tanh(o). Step mode: the window's hypergradient says which way to
        move, the network how far: a = a0 - step * tanh(exp(o) * cos), clamped to the
        bound, so scales far from 1 are reached over windows of consistent evidence."""
        a0, b0 = prev["a"], prev["b"]
        cfg = self.cfg
        if cfg.max_log_step == 0:
            a = (self.anchor + cfg.max_log_scale * torch.tanh(out[:, 0])).clamp(-cfg.max_log_scale, cfg.max_log_scale)
            return a, cfg.max_log_wd_scale * torch.tanh(out[:, 1])
        gain = out.clamp(-4, 4).exp()
        cos_lr, cos_wd = prev["lr_cosine"].clamp(-1, 1), prev["wd_cosine"].clamp(-1, 1)
        a = (a0 - cfg.max_log_step * torch.tanh(gain[:, 0] * cos_lr)).clamp(-cfg.max_log_scale, cfg.max_log_scale)
        step_wd = min(cfg.max_log_step, cfg.max_log_wd_scale)
        b = (b0 - step_wd * torch.tanh(gain[:, 1] * cos_wd)).clamp(-cfg.max_log_wd_scale, cfg.max_log_wd_scale)
        return a, b

    def _decide(self, stats: dict, frozen: bool) -> float:
        """Learn from the window, then choose the next scales; returns the meta head's
        forecast (NaN while frozen)."""
        x = self._features(stats)  # normalisers learn during warm-up too
        log_loss = math.log(self.window.loss)
        forecast = float("nan")
        if not frozen:
            meta_log_loss = self._meta_log_loss()
            self._meta_update(stats, meta_log_loss)
            with torch.no_grad():
                out, pred, hc = self.net(x, self.hc)
            self.prev = {
                "x": x, "h": self.hc[0], "c": self.hc[1], "a": self.a, "b": self.b,
                "lr_cosine": stats["lr_cosine"], "wd_cosine": stats["wd_cosine"],
            }
            forecast = float(pred)
            if math.isfinite(meta_log_loss):
                self.pending.append({"feature": hc[0].mean(0), "log_loss": meta_log_loss, "forecast": forecast})
            self.hc = hc
            self.a, self.b = (v.clone() for v in self._bounded(out, self.prev))
            self._watch_plateau(forecast)
        self.last_log_loss = log_loss
        return forecast

    def _watch_plateau(self, forecast: float) -> None:
        """Early stopping: count decisions in a row whose forecast improvement is below
        `early_stop_min_delta`, once the meta head has learnt from `patience` outcomes."""
        patience = self.cfg.early_stop_patience
        if not patience or self.meta_updates < patience:
            return
        self.plateau = self.plateau + 1 if -forecast < self.cfg.early_stop_min_delta else 0

    def _meta_update(self, stats: dict, meta_log_loss: float) -> None:
        """One Adam step on the controller: the window's hypergradients (dL/da_g,
        normalised) flow back through the outputs that set this window's scales; and the
        meta head learns from the forecast made `meta_horizon` windows ago."""
        if self.prev is not None:
            out, _, _ = self.net(self.prev["x"], (self.prev["h"], self.prev["c"]))
            a, b = self._bounded(out, self.prev)
            loss = (stats["lr_cosine"].clamp(-1, 1) * a).mean() + self.cfg.scale_reg * (a - self.anchor).square().mean()
            if self.cfg.max_log_wd_scale > 0:
                loss = loss + (stats["wd_cosine"].clamp(-1, 1) * b).mean() + self.cfg.scale_reg * b.square().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], 1.0)
            self.opt.step()
            self.meta_loss = float(loss.detach())
        if len(self.pending) >= self.cfg.meta_horizon and math.isfinite(meta_log_loss):
            record = self.pending.pop(0)
            realised = meta_log_loss - record["log_loss"]
            self._learn_forecast(record["feature"], realised)
            self.meta_error = record["forecast"] - realised  # the forecast as made vs what happened
            self.meta_updates += 1

    @torch.no_grad()
    def _learn_forecast(self, feature: torch.Tensor, realised: float) -> None:
        """Normalised least mean squares on the meta head (Widrow-Hoff): move its
        weights along the decision's LSTM state (mean over groups) and a constant, so
        that its forecast for that state closes `meta_step` of its error. The step is
        proportional to the error: no jitter once the forecasts are right."""
        head = self.net.meta
        error = realised - float(head(feature).squeeze())
        gain = self.cfg.meta_step * error / (float(feature.square().sum()) + 1.0)
        head.weight.add_(gain * feature.unsqueeze(0))
        head.bias.add_(gain)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "h": self.hc[0].clone(),
            "c": self.hc[1].clone(),
            "norm_mean": self.norm_mean.clone(),
            "norm_sq": self.norm_sq.clone(),
            "norm_weight": self.norm_weight,
            "prev": None if self.prev is None else _copy(self.prev),
            "last_log_loss": self.last_log_loss,
            "meta_error": self.meta_error,
            "meta_loss": self.meta_loss,
            "pending": [_copy(r) for r in self.pending],
            "val_log_loss": self.val_log_loss,
            "meta_updates": self.meta_updates,
            "plateau": self.plateau,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.hc = (state["h"].clone(), state["c"].clone())
        self.norm_mean, self.norm_sq = state["norm_mean"].clone(), state["norm_sq"].clone()
        self.norm_weight = state["norm_weight"]
        self.prev = None if state["prev"] is None else _copy(state["prev"])
        self.last_log_loss = state["last_log_loss"]
        self.meta_error, self.meta_loss = state["meta_error"], state["meta_loss"]
        self.pending = [_copy(r) for r in state["pending"]]
        self.val_log_loss, self.meta_updates = state["val_log_loss"], state["meta_updates"]
        self.plateau = state["plateau"]


def _copy(record: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in record.items()}


def decision_history(trace: list[dict], prefix: str = "controller/") -> dict[str, list[dict]]:
    """The trace as MLflow metric history: {name: [{"step": s, "value": v}, ...]}."""
    history: dict[str, list[dict]] = {}
    for row in trace:
        for key, value in row.items():
            if key != "step" and math.isfinite(value):
                history.setdefault(prefix + key, []).append({"step": int(row["step"]), "value": float(value)})
    return history
