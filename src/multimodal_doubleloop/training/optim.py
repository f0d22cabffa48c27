"""The inner optimiser: AdamW per parameter group, its learning rates, its step."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .schedule import lr_at


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
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def add_loss_weights(optimizer, params: list[nn.Parameter]) -> None:
    """Learned multi-task loss weights as their own group, "loss_weights" (no decay)."""
    if params:
        optimizer.add_param_group({"params": params, "weight_decay": 0.0, "name": "loss_weights", "base_wd": 0.0})


def set_learning_rates(
    optimizer, cfg: TrainConfig, step: int, total_steps: int, scales: dict, wd_scales: dict | None = None
) -> float:
    """Set each group's LR (schedule x `group_lr` x the adapter's scale) and weight
    decay for `step`; returns the schedule's base LR."""
    base = cfg.lr * lr_at(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        name = group["name"]
        group["lr"] = base * cfg.group_lr.get(name, 1.0) * scales.get(name, 1.0)
        group["weight_decay"] = group["base_wd"] * (wd_scales or {}).get(name, 1.0)
    return base


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor) -> None:
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
