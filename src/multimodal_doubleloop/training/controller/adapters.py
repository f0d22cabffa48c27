"""The adapters' shared machinery, and plain hypergradient descent.

`Adapter` is what the training loop needs from an outer loop; `ScaleAdapter`
implements it for both methods (per-group log LR and WD scales, the window's
statistics, calibration, the decision trace) and leaves the decision at each window
end to a subclass. `HypergradientDescent` is the simplest such subclass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from .config import ControllerConfig
from .state import CHECKED, CONFIG, Stateful
from .window import WindowStats

logger = logging.getLogger(__name__)


class Adapter(Protocol):
    """What the loop needs from a learning-rate adapter (e.g. the controller)."""

    def decides_at(self, step: int) -> bool: ...  # may the scales change before `step`?

    def scales(self) -> dict[str, float]: ...  # per-group LR multipliers

    def weight_decay_scales(self) -> dict[str, float]: ...  # per-group WD multipliers

    # Gradients are final (unscaled, clipped); the optimiser still holds the last step's
    # state and lr/wd: the place to measure hypergradients and take decisions.
    def before_step(self, step: int, optimizer) -> None: ...

    def observe(self, step: int, stats: dict[str, float], optimizer) -> None: ...

    # A held-out loss for the adapter: before `before_step` at the steps it asks for,
    # the loop scores the first `validation_images()` validation images and passes
    # their loss to `observe_validation`.
    def validation_images(self) -> int: ...

    def wants_validation(self, step: int) -> bool: ...

    def observe_validation(self, loss: float) -> None: ...

    def stop_requested(self) -> bool: ...  # read at decision steps: end the run before this step

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _as_dict(groups: list[str], log_scales: torch.Tensor) -> dict[str, float]:
    return {g: math.exp(float(a)) for g, a in zip(groups, log_scales, strict=True)}


def trace_row(step: int, groups, a, b, stats: dict, fallback: bool, **extra) -> dict:
    row = {"step": step, "fallback": float(fallback)}
    for i, g in enumerate(groups):
        row[f"lr_scale/{g}"] = math.exp(float(a[i]))
        row[f"wd_scale/{g}"] = math.exp(float(b[i]))
        cos = float(stats["lr_cosine"][i])
        row[f"lr_cosine/{g}"] = cos if math.isfinite(cos) else 0.0
        row[f"update_ratio/{g}"] = math.exp(float(stats["log_update_ratio"][i]))  # per step, |dtheta| / |theta|
    return {**row, **{k: v for k, v in extra.items() if math.isfinite(v)}}  # no NaN before the first meta step



def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


@dataclass(eq=False)
class ScaleAdapter(Stateful):
    """What both adapters share: per-group log LR (a) and WD (b) scales, the window's
    statistics, the decision trace, and the loop's `Adapter` calls. Subclasses decide
    in `_window_end(step, stats, ok)`. Every field not marked CONFIG is checkpointed."""

    method: ClassVar[str] = ""

    cfg: ControllerConfig = field(metadata=CONFIG)
    groups: list[str] = field(metadata=CHECKED)
    warmup_steps: int = field(metadata=CONFIG)
    window: WindowStats = field(init=False)
    a: torch.Tensor = field(init=False)  # log LR scale per group
    b: torch.Tensor = field(init=False)  # log WD scale per group
    # Where the pull toward a default scale acts: 0 (scale 1) until calibrated.
    anchor: torch.Tensor = field(init=False)
    calibrated: bool = field(init=False, default=False)
    trace: list[dict] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.groups = list(self.groups)
        n = len(self.groups)
        self.window = WindowStats.create(self.cfg, self.groups)
        self.a, self.b, self.anchor = _zeros(n), _zeros(n), _zeros(n)
        self._publish()

    def state_dict(self) -> dict:
        return {"method": self.method, **super().state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"checkpoint holds a {state.get('method')!r} adapter, not {self.method!r}")
        super().load_state_dict({k: v for k, v in state.items() if k != "method"})

    def _after_load(self) -> None:
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
        if not ok:  # hold the calibrated scales: scale 1 would be the uncorrected base LR
            self.a, self.b = self.anchor.clone(), torch.zeros_like(self.b)
            logger.warning(
                "%s: non-finite statistics at step %d, LR scales back to the anchor %s", self.method, step,
                {g: round(v, 4) for g, v in _as_dict(self.groups, self.a).items()},
            )
        elif self.cfg.target_update_ratio and not self.calibrated:  # a failed calibration retries at the next window end
            self._calibrate(step, stats)
        if window_end:
            self._window_end(step, stats, ok)
        else:  # the calibration step alone: recorded, no learned decision
            self.trace.append(trace_row(step, self.groups, self.a, self.b, stats, fallback=not ok))
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


@dataclass(eq=False)
class HypergradientDescent(ScaleAdapter):
    """Plain HD, no LSTM: the multiplicative rule on each group's log LR scale (WD
    is not adapted)."""

    method: ClassVar[str] = "hypergradient"

    def _window_end(self, step: int, stats: dict, ok: bool) -> None:
        if ok and step >= self.warmup_steps:
            # Baydin's per-step rule summed over the window's `every` steps (the mean of
            # the measured steps stands in for the unmeasured ones).
            delta = self.cfg.hypergradient_lr * stats["lr_cosine"] * self.cfg.every
            self.a = (self.a - delta).clamp(-self.cfg.max_log_scale, self.cfg.max_log_scale)
        self.trace.append(trace_row(step, self.groups, self.a, self.b, stats, fallback=not ok))




@dataclass(eq=False)
class CalibratedOnly(ScaleAdapter):
    """The calibration alone: one common LR factor at the first measured step, then no
    outer-loop moves. The null hypothesis for the other adapters (does anything after
    the calibration earn its keep?)."""

    method: ClassVar[str] = "calibrated"

    def _window_end(self, step: int, stats: dict, ok: bool) -> None:
        self.trace.append(trace_row(step, self.groups, self.a, self.b, stats, fallback=not ok))
