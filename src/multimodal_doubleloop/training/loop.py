"""The inner loop: AdamW, warm-up + cosine, accumulation, clipping, AMP, resume.

Functions, not a framework. `train` builds a `Run` (model, optimiser, sampler, ...)
once, resumes it from the newest checkpoint, then calls `train_one_epoch` until the
budget is spent; an epoch is forward/backward per micro-batch (`_forward_backward`),
an optimiser update per accumulated batch (`_update`, where an optional `adapter`
sets per-group learning-rate scales), and logging and checkpoints at sync points
(`_after_update`). `evaluate.evaluate` scores a split.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.batching import EncodedSplit, ImageMajorBatches, batch_stream, first_images, to_device
from ..models.losses import total
from ..tasks import TaskSet
from . import distributed
from .checkpoint import describe_start, prune_configurations, resume_run, run_directory, save_run
from .config import TrainConfig
from .controller import Adapter
from .evaluate import evaluate
from .finetune import apply_freeze
from .optim import (
    OWN_SCHEDULE,
    add_loss_weights,
    eval_weights,
    has_eval_mode,
    make_optimizer,
    optimizer_step,
    set_learning_rates,
)
from .precision import resolve_device, resolve_precision
from .schedule import lr_at
from .state import NonFiniteLossError, RunningStats, TrainState

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainState", "train", "train_one_epoch"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TaskStep(nn.Module):
    """One forward of the model and the task losses, as a module so that
    DistributedDataParallel (or torch.compile) can wrap the whole step."""

    def __init__(self, model: nn.Module, tasks: TaskSet):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, batch: dict):
        return self.tasks.step(self.model, batch)


@dataclass
class Run:
    """What one call of `train` holds from start to end (built once by `_setup`)."""

    cfg: TrainConfig
    run_config: dict  # every parameter of the run, stored with each checkpoint
    checkpoint_dir: Path  # this configuration's folder under cfg.checkpoint_dir
    ctx: distributed.Context
    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    tasks: TaskSet
    adapter: Adapter | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: ImageMajorBatches
    step_module: nn.Module  # TaskStep, wrapped by DDP or torch.compile where configured
    total_steps: int
    train_split: EncodedSplit
    val_split: EncodedSplit | None
    images: object  # image store of training (augmented when configured)
    val_images: object  # image store of validation (never augmented)
    meta_split: EncodedSplit | None  # the adapter's held-out batch (Adapter.validation_images)
    eval_split: EncodedSplit | None  # validated every `eval_every` steps (TrainState.val_log)
    running: RunningStats
    bar: tqdm | None = None
    adapter_scales: tuple | None = None  # the adapter's (LR, WD) scales at its last decision
    stop: bool = False  # the adapter asked to end the run (early stopping)

    def parts(self) -> dict:
        """What a checkpoint saves and a resume restores, by name."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "adapter": self.adapter,
            "tasks": self.tasks,
        }

    def checkpoint(self, state: TrainState, best: bool = False) -> None:
        if self.ctx.is_main:  # rank 0 alone writes
            if not self.checkpoint_dir.exists():  # the first checkpoint of this configuration
                self.checkpoint_dir.mkdir(parents=True)
                prune_configurations(self.cfg.checkpoint_dir, self.cfg.keep_configs, self.checkpoint_dir)
            save_run(self.checkpoint_dir, self.run_config, state, self.parts(), self.cfg.keep_last, best,
                     labels=self.tasks.labels())


@dataclass
class _Clock:
    start: float = field(default_factory=time.perf_counter)
    seen: int = 0  # samples this process has trained on in this epoch, since this start

    def rate(self) -> float:
        return self.seen / max(time.perf_counter() - self.start, 1e-9)


def train(
    model: nn.Module,
    train_split: EncodedSplit,
    val_split: EncodedSplit | None,
    images,
    cfg: TrainConfig,
    run_config: dict,
    tasks: TaskSet,
    adapter: Adapter | None = None,
    val_images=None,
) -> TrainState:
    """Train `model` in place and return the final `TrainState` (with history).

    Resumes from the newest checkpoint of this configuration when `cfg.resume`:
    `run_config` (all parameters of the run) decides the folder,
    `<cfg.checkpoint_dir>/<digest>/`, so another configuration starts fresh in its own.
    `tasks` supplies the loss and the accuracy; `val_images` (default `images`) is the
    image store for validation, i.e. one without augmentation.
    """
    run = _setup(model, train_split, val_split, images, cfg, run_config, tasks, adapter, val_images)
    state = resume_run(run.checkpoint_dir, run_config, run.parts()) if cfg.resume else None
    if state is None and run.ctx.is_main:
        describe_start(cfg.checkpoint_dir, run.checkpoint_dir)
    elif state is not None and (state.step >= run.total_steps or state.epoch >= cfg.epochs):
        logger.warning(
            "The checkpoint at step %d (epoch %d) already covers this run's budget (%d steps, %d "
            "epochs): nothing left to train, the model is the checkpoint's. To train anew: "
            "--params training.resume=false (or make clean-checkpoints)",
            state.step, state.epoch, run.total_steps, cfg.epochs,
        )
    state = state or TrainState()
    if state.step < run.total_steps and state.epoch < cfg.epochs and not state.stopped_early_at:
        _continue_schedule(run, state)  # it trains on
    apply_freeze(model, cfg.freeze, state.step)  # as the uninterrupted run had it at this step
    run.bar = tqdm(
        total=run.total_steps,
        initial=state.step,
        disable=not (cfg.progress_bar and run.ctx.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    while state.epoch < cfg.epochs and state.step < run.total_steps and not state.stopped_early_at:
        row = train_one_epoch(run, state)
        if not _end_epoch(run, state, row):
            break
    run.bar.close()
    if has_eval_mode(run.optimizer):  # schedule-free: the model keeps the averaged iterate
        run.optimizer.eval()
    return state


def _continue_schedule(run: Run, state: TrainState) -> None:
    """Before training (on): warn when a resumed run's budget changes the LR schedule it
    was following, and drop a `partial` history row of the epoch it goes on with (its
    full row replaces it)."""
    if state.history and state.history[-1].get("partial") and state.history[-1]["epoch"] == state.epoch:
        state.history.pop()
    planned, cfg = state.planned_steps, run.cfg
    if planned and planned != run.total_steps and cfg.optimizer not in OWN_SCHEDULE and run.ctx.is_main:
        before = lr_at(state.step, planned, cfg.warmup_steps, cfg.min_lr_ratio)
        after = lr_at(state.step, run.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
        logger.warning(
            "Resuming at step %d with a budget of %d steps, but the checkpoint's LR schedule ran to %d: "
            "its factor jumps from %.3g to %.3g, and the result matches neither an uninterrupted run of "
            "%d nor of %d steps. Keep training.epochs / max_steps as they were to continue the schedule.",
            state.step, run.total_steps, planned, before, after, planned, run.total_steps,
        )
    state.planned_steps = run.total_steps


def _setup(model, train_split, val_split, images, cfg, run_config, tasks, adapter, val_images) -> Run:
    """Device, precision, optimiser, sampler and the (wrapped) step module of a run."""
    ctx = distributed.context()  # rank 0 of 1 unless started by spawn/torchrun
    device = resolve_device(distributed.device_for(ctx, cfg.device))
    dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # conv weights; batches match in `to_device`
    optimizer = make_optimizer(model, cfg)
    add_loss_weights(optimizer, tasks.to(device).parameters())
    # Each rank takes its own images of every global batch; together they make the
    # batch a single process would see with images_per_batch * world_size images.
    sampler = ImageMajorBatches(
        train_split.image_rows, cfg.images_per_batch, shuffle=True, seed=cfg.seed,
        rank=ctx.rank, world_size=ctx.world_size, texts_per_image=cfg.texts_per_image,
    )
    step_module: nn.Module = TaskStep(model, tasks)
    if ctx.world_size > 1:
        step_module = DistributedDataParallel(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            # a multi-task batch may hold no rows for some task (e.g. no caption rows),
            # leaving its head without gradients in that step
            find_unused_parameters=len(tasks.tasks) > 1,
        )
    elif cfg.compile:
        step_module = torch.compile(step_module)
    total_steps = math.ceil(len(sampler) / cfg.grad_accum_steps) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return Run(
        cfg=cfg, run_config=run_config, checkpoint_dir=run_directory(cfg.checkpoint_dir, run_config),
        ctx=ctx, device=device, dtype=dtype, model=model,
        tasks=tasks, adapter=adapter, optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        sampler=sampler, step_module=step_module, total_steps=total_steps,
        train_split=train_split, val_split=val_split, images=images,
        val_images=images if val_images is None else val_images,
        meta_split=_meta_split(adapter, val_split), running=RunningStats(device),
        eval_split=(
            first_images(val_split, cfg.eval_images) if cfg.eval_images else val_split
        ) if cfg.eval_every and val_split is not None and len(val_split) else None,
    )


def _meta_split(adapter: Adapter | None, val_split: EncodedSplit | None) -> EncodedSplit | None:
    """The first `adapter.validation_images()` validation images, or None."""
    if adapter is None or not adapter.validation_images():
        return None
    if val_split is None or not len(val_split):
        raise ValueError(
            f"training.controller.meta_images={adapter.validation_images()} needs a validation "
            "split; give the data a 'val' split (ingestion.val_fraction > 0) or set meta_images: 0"
        )
    return first_images(val_split, adapter.validation_images())


def train_one_epoch(run: Run, state: TrainState) -> dict:
    """Train from `state.batch_in_epoch` to the end of the epoch (or of the budget, or
    until the adapter stops the run); returns the epoch's summary row."""
    cfg = run.cfg
    run.sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    clock = _Clock()
    micro = 0
    run.optimizer.zero_grad(set_to_none=True)
    for batch in batch_stream(run.train_split, run.images, run.sampler, cfg.num_workers):
        loss_value, objective = _forward_backward(run, state, to_device(batch, run.device), clock)
        micro += 1
        if micro < cfg.grad_accum_steps and state.batch_in_epoch != len(run.sampler):
            continue
        micro = 0
        base_lr = _update(run, state, loss_value, objective)
        if base_lr is None:  # the adapter stopped the run
            break
        _after_update(run, state, loss_value, base_lr, clock)
        if state.step >= run.total_steps:
            break
    run.running.sync(state, cfg, None)
    return _epoch_row(run, state, clock)


def _forward_backward(run: Run, state: TrainState, batch: dict, clock: _Clock) -> tuple:
    """Loss and backward of one micro-batch; returns its loss as one process logs it
    and its objective (the tasks' own losses, what the adapter reads), device scalars
    (the global batch's under DDP)."""
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
        result = run.step_module(batch)
        loss = total(result.terms)
    weight, loss_value = 1.0, loss.detach().float()
    objective = loss_value if result.objective is None else result.objective
    if run.ctx.world_size > 1:  # DDP averages ranks; weight them by their share of the samples
        n = loss_value.new_tensor(result.count)
        sums = distributed.all_reduce_sum(torch.stack([n, loss_value * n, objective * n]))
        weight = result.count * run.ctx.world_size / sums[0]
        loss_value, objective = sums[1] / sums[0], sums[2] / sums[0]
    run.scaler.scale(loss * weight / run.cfg.grad_accum_steps).backward()
    state.batch_in_epoch += 1
    clock.seen += result.count
    state.epoch_seen += result.count
    run.running.add(loss_value * result.count, result.hits)
    return loss_value, objective


def _update(run: Run, state: TrainState, loss_value: torch.Tensor, objective: torch.Tensor) -> float | None:
    """Clip, consult the adapter, step the optimiser (a non-finite step is skipped on
    the device); returns the schedule's base LR, or None when the adapter stopped the
    run (this batch's gradient was the window's last measurement; no update)."""
    cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    )
    finite = torch.isfinite(loss_value) & torch.isfinite(grad_norm)
    scales, wd_scales = {}, {}
    if run.adapter is not None:
        scales, wd_scales = _consult_adapter(run, state)
        if run.stop:
            state.stopped_early_at = state.step
            optimizer.zero_grad(set_to_none=True)
            return None
    base_lr = set_learning_rates(optimizer, cfg, state.step, run.total_steps, scales, wd_scales)
    optimizer_step(optimizer, scaler, finite)
    run.running.step_done(finite, state.step)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if cfg.freeze:
        apply_freeze(run.model, cfg.freeze, state.step)
    if run.adapter is not None:
        stats = {
            "loss": objective,  # >= 0 for every task weighting (the weighted total need not be)
            "accuracy": run.running.accuracy(state),
            "finite": finite,
            "progress": state.step / run.total_steps,
            "lr_factor": base_lr / cfg.lr,  # the schedule's multiplier for this step
        }
        run.adapter.observe(state.step, stats, optimizer)
    return base_lr


def _consult_adapter(run: Run, state: TrainState) -> tuple[dict, dict]:
    """Let the adapter measure and decide; returns its (LR, WD) scales, broadcast from
    rank 0 at its decision steps only (and its stop request with them)."""
    adapter = run.adapter
    if run.meta_split is not None and adapter.wants_validation(state.step):
        held_out = _evaluate(run, run.meta_split)
        adapter.observe_validation(held_out["loss"])
    adapter.before_step(state.step, run.optimizer)
    if run.adapter_scales is None or adapter.decides_at(state.step):
        names = sorted({g["name"] for g in run.optimizer.param_groups})
        run.adapter_scales = tuple(  # rank 0's, identical on every rank
            distributed.broadcast_scales(s, names, run.device)
            for s in (adapter.scales(), adapter.weight_decay_scales())
        )
        flag = {"stop": float(adapter.stop_requested())}
        run.stop = distributed.broadcast_scales(flag, ["stop"], run.device)["stop"] > 0
    return run.adapter_scales


def _after_update(run: Run, state: TrainState, loss_value, base_lr: float, clock: _Clock) -> None:
    """Progress bar; at sync points the host reads the counters (NaN guard, step log);
    a checkpoint every `checkpoint_every` steps."""
    cfg = run.cfg
    run.bar.update(1)
    checkpoint_now = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
    if state.step % cfg.log_every == 0 or checkpoint_now or state.step >= run.total_steps:
        run.running.sync(state, cfg, loss_value)  # the host sync: counters, NaN guard, logs
        run.bar.set_postfix(loss=f"{run.running.last_loss:.4f}", qps=f"{clock.rate():.0f}")
        if state.step % cfg.log_every == 0:
            state.step_log.append({"step": state.step, "loss": run.running.last_loss, "lr": base_lr})
    if run.eval_split is not None and state.step % cfg.eval_every == 0 and run.ctx.is_main:
        val = _evaluate(run, run.eval_split)
        state.val_log.append({"step": state.step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]})
    if checkpoint_now:
        run.checkpoint(state)


def _evaluate(run: Run, split: EncodedSplit) -> dict:
    with eval_weights(run.optimizer):
        return evaluate(run.model, split, run.val_images, run.cfg, run.tasks)


def _epoch_row(run: Run, state: TrainState, clock: _Clock) -> dict:
    row = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": state.epoch_loss_sum / max(state.epoch_seen, 1),
        "train_accuracy": state.epoch_correct / max(state.epoch_seen, 1),
        "seconds": time.perf_counter() - clock.start,
        "questions_per_s": clock.rate(),
    }
    if run.val_split is not None and len(run.val_split) and run.ctx.is_main:
        val = _evaluate(run, run.val_split)
        row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    if run.stop:
        row["early_stop"] = 1.0
        logger.info("The controller stopped the run at step %d of %d", state.step, run.total_steps)
    return row


def _end_epoch(run: Run, state: TrainState, row: dict) -> bool:
    """Record the epoch; checkpoint (best.pt by validation loss); whether to go on."""
    cfg = run.cfg
    partial = state.batch_in_epoch < len(run.sampler)  # stopped by max_steps inside the epoch
    state.history.append({**row, "partial": 1.0} if partial else row)
    rounded = {k: round(v, 4) for k, v in row.items()}
    logger.info("epoch %d%s: %s", state.epoch, " (partial)" if partial else "", rounded)
    if partial or run.stop:  # a rerun with a larger max_steps continues this epoch where it stopped
        if cfg.checkpoint_every and (run.stop or state.step % cfg.checkpoint_every):
            run.checkpoint(state)  # after an early stop (with its history row) a rerun resumes into the end
        return False
    state.epoch += 1
    state.batch_in_epoch = state.epoch_seen = state.epoch_correct = 0
    state.epoch_loss_sum = 0.0
    if cfg.checkpoint_every:
        # the best epoch by validation loss is kept as best.pt beside the last K
        losses = [r["val_loss"] for r in state.history if "val_loss" in r]
        run.checkpoint(state, best=bool(losses) and losses[-1] <= min(losses))
    return True
