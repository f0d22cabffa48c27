"""What every adapter tracks between decisions: one window of inner steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import ControllerConfig
from .hypergradient import HypergradientMeter
from .state import CONFIG, Stateful

# Losses the controller takes the log of are floored here: a loss of exactly 0 (a task
# learnt perfectly) is a well-defined statistic, not a non-finite window.
LOSS_FLOOR = 1e-8


def log_loss(loss: float) -> float:
    return math.log(max(loss, LOSS_FLOOR))


def _nan() -> torch.Tensor:
    return torch.tensor(float("nan"), dtype=torch.float64)


@dataclass(eq=False)
class WindowStats(Stateful):
    """The hypergradient meter, loss and accuracy EMAs, progress, and whether the
    window saw only finite statistics. Between reads the EMAs are device scalars."""

    cfg: ControllerConfig = field(metadata=CONFIG)
    meter: HypergradientMeter
    loss_ema: torch.Tensor = field(default_factory=_nan)
    acc_ema: torch.Tensor = field(default_factory=_nan)
    ok: torch.Tensor = field(default_factory=lambda: torch.tensor(True))
    progress: float = 0.0
    loss: float = float("nan")  # the EMAs as read at the last window end
    accuracy: float = float("nan")
    # The schedule multiplier of the last step taken (host float), and the sum of its
    # log over the steps whose update the meter measured in this window.
    lr_factor: float = float("nan")
    log_factor_sum: float = 0.0
    log_factor_count: int = 0

    @classmethod
    def create(cls, cfg: ControllerConfig, groups: list[str]) -> WindowStats:
        return cls(cfg, HypergradientMeter(groups))

    def observe(self, stats: dict) -> None:
        """Fold one step in, on the device (no host sync). `stats["loss"]` is the step's
        objective, the sum of the tasks' own losses (>= 0 whatever the weighting: an
        uncertainty-weighted total can be negative and is not what the controller reads)."""
        loss = torch.as_tensor(stats["loss"]).double()
        acc = torch.as_tensor(stats["accuracy"]).double()
        good = torch.as_tensor(stats["finite"]) & torch.isfinite(loss) & (loss >= 0)
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
