"""The outer loop's configuration: `params:training.controller` as a dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ...config import build

METHODS = ("fixed", "calibrated", "hypergradient", "double_loop")


@dataclass
class ControllerConfig:
    method: str = "fixed"  # fixed | calibrated | hypergradient | double_loop
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
        if self.method == "calibrated" and not self.target_update_ratio:
            checks["target_update_ratio"] = False  # `calibrated` is the calibration alone
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "training.controller: out-of-range value(s) "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )
        meta_only = [k for k in ("meta_images", "early_stop_patience") if getattr(self, k)]
        if meta_only and self.method != "double_loop":
            raise ValueError(
                f"training.controller: {', '.join(f'{k}={getattr(self, k)}' for k in meta_only)} belong(s) to "
                f"double_loop's meta head and do nothing with method={self.method!r}: set "
                "training.controller.method=double_loop as well, or leave them at 0"
            )

    @classmethod
    def from_dict(cls, params: dict) -> ControllerConfig:
        return build(cls, params, "training.controller")

    def to_dict(self) -> dict:
        return asdict(self)
