"""The inner loop: AdamW, warm-up + cosine, accumulation, clipping, AMP, resume.

Functions, not a framework: `train` drives `train_one_epoch`; `evaluate` scores a
split. An optional `adapter` (the double-loop controller, or hypergradient
descent) sets per-group learning-rate scales between optimiser steps.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.batching import BatchDataset, EncodedSplit, ImageMajorBatches, collate, first_images
from ..models.losses import total
from . import distributed
from .checkpoint import CheckpointError, load_latest, save_checkpoint
from .config import TrainConfig
from .precision import resolve_device, resolve_precision
from .schedule import lr_at
from .tasks import TaskSet

logger = logging.getLogger(__name__)

# Keys that may differ between a checkpoint and the run resuming it.
RESUMABLE_DIFFERENCES = {
    "training.epochs",
    "training.max_steps",
    "training.progress_bar",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_last",
    "training.num_workers",
    "training.resume",
    "training.checkpoint_dir",
    "training.device",
    "training.compile",
}


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
    history: list[dict] = field(default_factory=list)  # one row per epoch
    step_log: list[dict] = field(default_factory=list)  # one row per log_every steps


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one group per (component, decay) pair; norms, biases and
    embeddings-like 1-D parameters get no weight decay."""
    groups = []
    for name, params in model.parameter_groups().items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for plist, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if plist:
                groups.append({"params": plist, "weight_decay": wd, "name": name, "base_wd": wd})
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, fused=True
    )


def set_learning_rates(
    optimizer, cfg: TrainConfig, step: int, total_steps: int, scales: dict, wd_scales: dict | None = None
) -> float:
    base = cfg.lr * lr_at(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        name = group["name"]
        group["lr"] = base * cfg.group_lr.get(name, 1.0) * scales.get(name, 1.0)
        group["weight_decay"] = group["base_wd"] * (wd_scales or {}).get(name, 1.0)
    return base


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        # as tensors and plain types, so checkpoints load with weights_only=True
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_rng_state() -> tuple:
    _, key, pos, has_gauss, cached = np.random.get_state()
    return torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = set(saved) | set(current)
    diffs = []
    for key in sorted(keys):
        path = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, path + ".")
        elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
            diffs.append(path)
    return diffs


def batches(split: EncodedSplit, images, sampler: ImageMajorBatches, num_workers: int):
    if num_workers == 0:
        return (collate(split, images, idx) for idx in sampler)
    return iter(
        torch.utils.data.DataLoader(
            BatchDataset(split, images),
            sampler=sampler,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
        )
    )


def _to(batch: dict, device: torch.device) -> dict:
    """Non-blocking copies (from pinned memory when DataLoader workers pin it); images
    channels-last on CUDA, where the convolutional stem runs faster in that layout."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if device.type == "cuda" and "images" in out:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: EncodedSplit,
    images,
    cfg: TrainConfig,
    head: str = "answer",
    tasks: TaskSet | None = None,
) -> dict:
    """Loss, accuracy (the primary task's) and per-task outputs over a split (see
    `tasks.Evaluation.result`); per-sample predictions/probabilities when the primary
    task is a classification. Without `tasks`: answer classification on `head`."""
    tasks = tasks if tasks is not None else TaskSet.answer_only(head, cfg.label_smoothing)
    device = next(model.parameters()).device
    dtype = resolve_precision(cfg.precision, device)
    sampler = ImageMajorBatches(split.image_rows, cfg.images_per_batch * 4, shuffle=False)
    was_training = model.training
    model.eval()
    run = tasks.evaluation()
    for idx, batch in zip(sampler, batches(split, images, sampler, cfg.num_workers), strict=True):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            run.add(model, _to(batch, device), torch.as_tensor(idx))
    model.train(was_training)
    return run.result(split)


class TaskStep(nn.Module):
    """One forward of the model and the task losses, as a module so that
    DistributedDataParallel (or torch.compile) can wrap the whole step."""

    def __init__(self, model: nn.Module, tasks: TaskSet):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, batch: dict):
        return self.tasks.step(self.model, batch)


def _optimizer_step(optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor) -> None:
    """Step unless `finite` is False, decided on the device (no host sync): GradScaler
    handles fp16; otherwise the fused AdamW kernel takes the same `found_inf` flag
    GradScaler would give it and leaves weights, moments and step count untouched."""
    if scaler.is_enabled():
        scaler.step(optimizer)
        return
    optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


class _RunningStats:
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


def train(
    model: nn.Module,
    train_split: EncodedSplit,
    val_split: EncodedSplit | None,
    images,
    cfg: TrainConfig,
    run_config: dict,
    adapter: Adapter | None = None,
    head: str = "answer",
    tasks: TaskSet | None = None,
    val_images=None,
) -> TrainState:
    """Train `model` in place and return the final `TrainState` (with history).

    Resumes from the newest checkpoint in `cfg.checkpoint_dir` when `cfg.resume`;
    `run_config` (all parameters of the run) is stored with each checkpoint and a
    checkpoint made with a different one is refused, naming the differing keys. `tasks` (default: answer classification on
    `head`) supplies the loss and the accuracy; `val_images` (default `images`) is the
    image store for validation, i.e. one without augmentation.
    """
    tasks = tasks if tasks is not None else TaskSet.answer_only(head, cfg.label_smoothing)
    ctx = distributed.context()  # rank 0 of 1 unless started by spawn/torchrun
    device = resolve_device(distributed.device_for(ctx, cfg.device))
    dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # conv weights; batches match in `_to`
    optimizer = make_optimizer(model, cfg)
    if tasks.to(device).parameters():
        optimizer.add_param_group(
            {"params": tasks.parameters(), "weight_decay": 0.0, "name": "loss_weights", "base_wd": 0.0}
        )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # Each rank takes its own images of every global batch; together they make the
    # batch a single process would see with images_per_batch * world_size images.
    sampler = ImageMajorBatches(
        train_split.image_rows,
        cfg.images_per_batch,
        shuffle=True,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
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
    steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    state = TrainState()
    val_store = images if val_images is None else val_images  # validation's images (no augmentation)
    meta_split = None  # the adapter's held-out batch (see Adapter.validation_images)
    if adapter is not None and adapter.validation_images():
        if val_split is None or not len(val_split):
            raise ValueError(
                f"training.controller.meta_images={adapter.validation_images()} needs a validation "
                "split; give the data a 'val' split (ingestion.val_fraction > 0) or set meta_images: 0"
            )
        meta_split = first_images(val_split, adapter.validation_images())

    if cfg.resume:
        found = load_latest(cfg.checkpoint_dir)
        if found is not None:
            payload, meta = found
            diffs = [d for d in _config_diff(meta["config"], run_config) if d not in RESUMABLE_DIFFERENCES]
            if diffs:
                raise CheckpointError(
                    f"checkpoint step {meta['step']} in {cfg.checkpoint_dir} was made with a "
                    f"different configuration (differing keys: {diffs}); delete the directory "
                    "or set training.resume: false to start over"
                )
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scaler.load_state_dict(payload["scaler"])
            if adapter is not None and payload.get("adapter") is not None:
                adapter.load_state_dict(payload["adapter"])
            tasks.load_state_dict(payload.get("tasks") or {})
            state = TrainState(**{**meta["state"]})
            _restore_rng(payload["rng"])
            logger.info("Resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch)

    def checkpoint(best: bool = False) -> None:
        if not ctx.is_main:  # rank 0 alone writes
            return
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "adapter": adapter.state_dict() if adapter is not None else None,
            "tasks": tasks.state_dict(),
            "rng": _rng_state(),
        }
        meta = {"config": run_config, "state": asdict(state)}
        save_checkpoint(cfg.checkpoint_dir, state.step, payload, meta, cfg.keep_last, best=best)

    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not (cfg.progress_bar and ctx.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    # Step statistics stay on the device between sync points (every log_every steps,
    # checkpoints and epoch ends): the inner loop itself never waits for the device.
    running = _RunningStats(device)
    adapter_scales = None  # the adapter's (LR, WD) scales as broadcast at its last decision
    stop = False  # the adapter asked to end the run (early stopping)
    while state.epoch < cfg.epochs and state.step < total_steps and not state.stopped_early_at:
        sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        epoch_start, seen_now = time.perf_counter(), 0
        micro = 0
        optimizer.zero_grad(set_to_none=True)
        for batch in batches(train_split, images, sampler, cfg.num_workers):
            batch = _to(batch, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                result = step_module(batch)
                loss = total(result.terms)
            weight, loss_value = 1.0, loss.detach().float()
            if ctx.world_size > 1:  # DDP averages ranks; weight them by their share of the samples
                sums = distributed.all_reduce_sum(torch.stack([loss_value.new_tensor(result.count), loss_value * result.count]))
                weight = result.count * ctx.world_size / sums[0]
                loss_value = sums[1] / sums[0]  # the global batch's loss, as one process logs it
            scaler.scale(loss * weight / cfg.grad_accum_steps).backward()
            micro += 1
            state.batch_in_epoch += 1
            n = result.count
            seen_now += n
            state.epoch_seen += n
            running.add(loss_value * n, result.hits)
            last_of_epoch = state.batch_in_epoch == len(sampler)
            if micro < cfg.grad_accum_steps and not last_of_epoch:
                continue
            micro = 0
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            finite = torch.isfinite(loss_value) & torch.isfinite(grad_norm)
            scales, wd_scales = {}, {}
            if adapter is not None:
                if meta_split is not None and adapter.wants_validation(state.step):
                    adapter.observe_validation(evaluate(model, meta_split, val_store, cfg, head, tasks)["loss"])
                adapter.before_step(state.step, optimizer)
                if adapter_scales is None or adapter.decides_at(state.step):  # at its decision steps only
                    names = sorted({g["name"] for g in optimizer.param_groups})
                    adapter_scales = tuple(  # rank 0's, identical on every rank
                        distributed.broadcast_scales(s, names, device)
                        for s in (adapter.scales(), adapter.weight_decay_scales())
                    )
                    flag = {"stop": float(adapter.stop_requested())}
                    stop = distributed.broadcast_scales(flag, ["stop"], device)["stop"] > 0
                scales, wd_scales = adapter_scales
                if stop:  # this batch's gradient was the window's last measurement; no update
                    state.stopped_early_at = state.step
                    optimizer.zero_grad(set_to_none=True)
                    break
            base_lr = set_learning_rates(optimizer, cfg, state.step, total_steps, scales, wd_scales)
            _optimizer_step(optimizer, scaler, finite)  # a non-finite step is skipped on the device
            running.step_done(finite, state.step)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if adapter is not None:
                adapter.observe(
                    state.step,
                    {
                        "loss": loss_value,
                        "accuracy": running.accuracy(state),
                        "finite": finite,
                        "progress": state.step / total_steps,
                        "lr_factor": base_lr / cfg.lr,  # the schedule's multiplier for this step
                    },
                    optimizer,
                )
            bar.update(1)
            checkpoint_now = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            if state.step % cfg.log_every == 0 or checkpoint_now or state.step >= total_steps:
                running.sync(state, cfg, loss_value)  # the host sync: counters, NaN guard, logs
                elapsed = time.perf_counter() - epoch_start
                bar.set_postfix(loss=f"{running.last_loss:.4f}", qps=f"{seen_now / max(elapsed, 1e-9):.0f}")
                if state.step % cfg.log_every == 0:
                    state.step_log.append({"step": state.step, "loss": running.last_loss, "lr": base_lr})
            if checkpoint_now:
                checkpoint()
            if state.step >= total_steps:
                break
        running.sync(state, cfg, None)
        row = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": state.epoch_loss_sum / max(state.epoch_seen, 1),
            "train_accuracy": state.epoch_correct / max(state.epoch_seen, 1),
            "seconds": time.perf_counter() - epoch_start,
            "questions_per_s": seen_now / max(time.perf_counter() - epoch_start, 1e-9),
        }
        if val_split is not None and len(val_split) and ctx.is_main:
            val = evaluate(model, val_split, val_store, cfg, head, tasks)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        if stop:
            row["early_stop"] = 1.0
            logger.info("The controller stopped the run at step %d of %d", state.step, total_steps)
        partial = state.batch_in_epoch < len(sampler)  # stopped by max_steps inside the epoch
        state.history.append({**row, "partial": 1.0} if partial else row)
        logger.info("epoch %d%s: %s", state.epoch, " (partial)" if partial else "", {k: round(v, 4) for k, v in row.items()})
        if partial or stop:  # a rerun with a larger max_steps continues this epoch where it stopped
            if cfg.checkpoint_every and (stop or state.step % cfg.checkpoint_every):
                checkpoint()  # after an early stop (with its history row) a rerun resumes into the end
            break
        state.epoch += 1
        state.batch_in_epoch = state.epoch_seen = state.epoch_correct = 0
        state.epoch_loss_sum = 0.0
        if cfg.checkpoint_every:
            # the best epoch by validation loss is kept as best.pt beside the last K
            losses = [r["val_loss"] for r in state.history if "val_loss" in r]
            checkpoint(best=bool(losses) and losses[-1] <= min(losses))
    bar.close()
    return state
