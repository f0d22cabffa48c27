"""What a run carries from step to step: `TrainState` (checkpointed) and the
device-side running statistics read at sync points only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # total non-finite steps skipped
    epoch_seen: int = 0  # samples seen in the current epoch (kept across a resume)
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    stopped_early_at: int = 0  # the step at which the adapter ended the run (0 = it did not)
    planned_steps: int = 0  # the LR schedule's length (steps) the run follows; 0 = not recorded
    history: list[dict] = field(default_factory=list)  # one row per epoch
    step_log: list[dict] = field(default_factory=list)  # one row per log_every steps
    val_log: list[dict] = field(default_factory=list)  # one row per eval_every steps


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class RunningStats:
    """Training statistics accumulated on the device and read at sync points only."""

    def __init__(self, device: torch.device):
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_sum, self.hits = zero.clone(), zero.clone()
        self.bad_run = zero.clone()  # consecutive non-finite steps so far
        self.worst_run = zero.clone()  # longest such run since the last sync
        self.worst_end = zero.clone()  # the step that ended it
        self.skipped = zero.clone()
        self.last_loss = float("nan")

    def add(self, weighted_loss: torch.Tensor, hits) -> None:
        self.loss_sum += weighted_loss.detach().double()
        self.hits += hits

    def step_done(self, finite: torch.Tensor, step: int) -> None:
        bad = (~finite).double()
        self.skipped += bad
        self.bad_run = (self.bad_run + 1) * bad
        longer = self.bad_run >= self.worst_run.clamp_min(1)
        self.worst_end = torch.where(longer, float(step), self.worst_end)
        self.worst_run = torch.maximum(self.worst_run, self.bad_run)

    def accuracy(self, state: TrainState) -> torch.Tensor:
        return (state.epoch_correct + self.hits) / max(state.epoch_seen, 1)

    def sync(self, state: TrainState, cfg: TrainConfig, loss: torch.Tensor | None) -> None:
        """Fold the device counters into `state` (one host sync) and apply the NaN guard."""
        values = torch.stack(
            [self.loss_sum, self.hits, self.skipped, self.bad_run, self.worst_run, self.worst_end]
            + ([loss.double()] if loss is not None else [])
        ).tolist()
        loss_sum, hits, skipped, bad_run, worst_run, worst_end = values[:6]
        if loss is not None:
            self.last_loss = values[6]
        state.epoch_loss_sum += loss_sum
        state.epoch_correct += round(hits)
        self.loss_sum.zero_()
        self.hits.zero_()
        if skipped:
            state.skipped_steps += round(skipped)
            logger.warning(
                "%d non-finite loss/gradient step(s) skipped before step %d (%d in a row now)",
                round(skipped), state.step, round(bad_run),
            )
            self.skipped.zero_()
        state.bad_steps = round(bad_run)
        if worst_run >= cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"{round(worst_run)} consecutive non-finite steps ending at step {round(worst_end)}; "
                f"last good checkpoint is in {cfg.checkpoint_dir}. Lower training.lr or "
                "check the input data"
            )
        self.worst_run.copy_(self.bad_run)
        self.worst_end.fill_(state.step - 1)
