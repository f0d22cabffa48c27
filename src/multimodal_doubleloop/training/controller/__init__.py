"""The outer loop of double-loop learning: adapters that rescale per-group LR and WD.

Two adapters implement the loop's `Adapter` protocol (`adapters.py`):

- `HypergradientDescent` (`adapters.py`): plain hypergradient descent (Baydin et al.
  2018), the multiplicative rule on a per-group log-scale, a_g <- a_g - beta * cos_g
  per step, where cos_g is the normalised one-step hypergradient dL/d log lr_g
  (`hypergradient.py` measures it from AdamW's own state).
- `DoubleLoopController` (`double_loop.py`): the LSTM meta-controller.

Calibration (`target_update_ratio` > 0): at the first measured step, early in
warm-up, both adapters multiply every group's scale by one factor so that the
update/parameter ratio, projected to the schedule's peak, meets the target. AdamW's
update size does not depend on the gradient's scale, so that ratio is proportional
to the LR and independent of the loss: one measurement turns a base LR that is 100x
off into the LR the target asks for, before a too-large LR has done harm or a
too-small one has wasted the warm-up. The calibrated scales are the anchor (scale 1
without calibration).

`CalibratedOnly` (method `calibrated`) is the calibration alone, with no moves after
it: the null hypothesis the other two must beat.

All make no learned decision during warm-up (calibration is a measurement, not a
decision), hold the anchor for a window whose statistics are not finite, do
their host work once per window, and keep everything that decides the next scales
in their dataclass fields, which checkpoint themselves (`state.py`: exact resume).
"""

from __future__ import annotations

import math

from .adapters import Adapter, CalibratedOnly, HypergradientDescent, ScaleAdapter
from .config import METHODS, ControllerConfig
from .double_loop import DoubleLoopController


def build_adapter(cfg: ControllerConfig, groups: list[str], warmup_steps: int) -> Adapter | None:
    """The adapter for `cfg.method` over the model's parameter groups (None for fixed)."""
    if cfg.method == "fixed":
        return None
    if cfg.method == "calibrated":
        return CalibratedOnly(cfg, groups, warmup_steps)
    if cfg.method == "hypergradient":
        return HypergradientDescent(cfg, groups, warmup_steps)
    return DoubleLoopController(cfg, groups, warmup_steps)


def decision_history(trace: list[dict], prefix: str = "controller/") -> dict[str, list[dict]]:
    """The trace as MLflow metric history: {name: [{"step": s, "value": v}, ...]}."""
    history: dict[str, list[dict]] = {}
    for row in trace:
        for key, value in row.items():
            if key != "step" and math.isfinite(value):
                history.setdefault(prefix + key, []).append({"step": int(row["step"]), "value": float(value)})
    return history


__all__ = [
    "METHODS",
    "Adapter",
    "CalibratedOnly",
    "ControllerConfig",
    "DoubleLoopController",
    "HypergradientDescent",
    "ScaleAdapter",
    "build_adapter",
    "decision_history",
]
