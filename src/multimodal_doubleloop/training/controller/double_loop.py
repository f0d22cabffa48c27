"""The double loop: an LSTM meta-controller trained online from hypergradients.

Every `every` inner steps a small LSTM reads running-normalised per-group statistics
and sets lr_g = base(t) * exp(a_g) (absolute mode: a_g = anchor_g + bound * tanh(o_g);
step mode: the window's hypergradient picks the direction of a move, the LSTM its
size), and a weight-decay multiplier the same way. It is trained online: the window's
hypergradients are the gradient of the inner loss with respect to its outputs, plus a
pull toward the anchor (Wu et al. 2018: one-step objectives prefer too-small learning
rates), plus a meta head that forecasts the change in log loss `meta_horizon` windows
ahead: the loss of a fixed held-out batch of validation images (`meta_images`), or
the training-loss EMA. Its forecast error is logged, and the forecast can stop the
run on a plateau (`early_stop_patience`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .adapters import ScaleAdapter, trace_row
from .window import log_loss

logger = logging.getLogger(__name__)

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


@dataclass(eq=False)
class DoubleLoopController(ScaleAdapter):
    """The LSTM meta-controller, trained online from accumulated hypergradients."""

    method: ClassVar[str] = "double_loop"

    net: ControllerNet = field(init=False)
    opt: torch.optim.Adam = field(init=False)  # trains the LSTM and scale outputs
    hc: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # LSTM state, (G, H) each
    norm_mean: torch.Tensor = field(init=False)  # running feature normalisers, (G, NORMALISED)
    norm_sq: torch.Tensor = field(init=False)
    norm_weight: float = field(init=False, default=0.0)  # bias correction of the EMA normalisers
    # Inputs of the forward that chose the current scales: the next meta update
    # recomputes it (a few hundred flops) instead of holding a graph across steps.
    prev: dict | None = field(init=False, default=None)
    last_log_loss: float = field(init=False, default=float("nan"))
    meta_error: float = field(init=False, default=float("nan"))
    meta_loss: float = field(init=False, default=float("nan"))
    # The meta head's forecasts awaiting their outcome, oldest first: the LSTM state
    # it was made from (mean over groups), the log loss then, and the forecast.
    pending: list[dict] = field(init=False, default_factory=list)
    val_log_loss: float = field(init=False, default=float("nan"))  # log held-out loss at this window end
    meta_updates: int = field(init=False, default=0)  # realised forecasts the meta head has learnt from
    plateau: int = field(init=False, default=0)  # consecutive decisions forecasting less than early_stop_min_delta

    def __post_init__(self):
        super().__post_init__()
        n, cfg = len(self.groups), self.cfg
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

    def validation_images(self) -> int:
        return self.cfg.meta_images

    def wants_validation(self, step: int) -> bool:
        return self.cfg.meta_images > 0 and step > 0 and step % self.cfg.every == 0

    def observe_validation(self, loss: float) -> None:
        self.val_log_loss = log_loss(loss) if math.isfinite(loss) and loss >= 0 else float("nan")

    def stop_requested(self) -> bool:
        patience = self.cfg.early_stop_patience
        return bool(patience) and self.plateau >= patience

    def _meta_log_loss(self) -> float:
        """The log loss the meta head forecasts, at this window end."""
        return self.val_log_loss if self.cfg.meta_images else log_loss(self.window.loss)

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
            trace_row(
                step, self.groups, self.a, self.b, stats, fallback=not ok,
                meta_prediction_error=self.meta_error, meta_loss=self.meta_loss,
                meta_forecast=forecast, meta_log_loss=self._meta_log_loss() if ok else float("nan"),
                early_stop=float(stop) if self.cfg.early_stop_patience else float("nan"),
            )
        )
        self.val_log_loss = float("nan")  # used once

    def _features(self, stats: dict) -> torch.Tensor:
        n = len(self.groups)
        current = log_loss(self.window.loss)
        slope = 0.0 if math.isnan(self.last_log_loss) else current - self.last_log_loss
        raw = torch.stack(
            [
                torch.full((n,), current, dtype=torch.float64),
                torch.full((n,), slope, dtype=torch.float64),
                torch.full((n,), self.window.accuracy, dtype=torch.float64),
                stats["log_grad_norm"],
                stats["log_update_ratio"],
            ],
            1,
        )  # (G, NORMALISED)
        # A group the meter did not see this window (frozen: `training.freeze`) has no
        # statistics: its normalisers hold and its features read 0 (the mean).
        count = stats.get("count")
        seen = (torch.ones(n, dtype=torch.bool) if count is None else count.cpu() > 0).unsqueeze(1)
        d = self.cfg.norm_decay
        self.norm_mean = torch.where(seen, d * self.norm_mean + (1 - d) * raw, self.norm_mean)
        self.norm_sq = torch.where(seen, d * self.norm_sq + (1 - d) * raw.square(), self.norm_sq)
        self.norm_weight = d * self.norm_weight + (1 - d)
        mean = self.norm_mean / self.norm_weight
        var = (self.norm_sq / self.norm_weight - mean.square()).clamp_min(0)
        normalised = torch.where(seen, ((raw - mean) / (var + 1e-4).sqrt()).clamp(-5, 5), 0.0)
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
        current = log_loss(self.window.loss)
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
        self.last_log_loss = current
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
