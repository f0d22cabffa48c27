"""The inner optimiser: AdamW per parameter group (or a learning-rate-free peer), its
learning rates, its step.

`training.optimizer` picks it. `adamw` is the project's own (fused, the non-finite
step skipped on the device). The peers are the real packages of the `study` extra
(`pip install -e '.[study]'`), each with its documented recommended settings for what
is its own (betas, eps, its estimator's constants) and the run's settings for what is
shared (weight decay per group, warm-up, clipping, batches):

- `prodigy` (prodigyopt.Prodigy), `dadapt_adam` (dadaptation.DAdaptAdam, decoupled
  decay) and `mechanic_adamw` (mechanic_pytorch.mechanize(torch.optim.AdamW)) estimate
  the step size themselves: `training.lr` is a multiplier on their estimate (1.0 is
  their recommendation); the warm-up + cosine schedule multiplies it as usual.
- `schedulefree_adamw` (schedulefree.AdamWScheduleFree) replaces the schedule: a
  constant `training.lr` with its own warm-up; evaluation and the final weights use
  its averaged iterate (`eval_weights`).

Prodigy and D-Adaptation refuse groups whose learning rates differ, and no peer
carries AdamW's state the hypergradient meter reads, so the peers run with
`training.controller.method: fixed` and no `group_lr` (checked in `TrainConfig`).
They skip a non-finite step with one host read per step.
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from torch import nn

from .config import TrainConfig
from .finetune import layer_scales
from .schedule import lr_at

# The peers: (module, class or factory) of the real package.
PEERS = {
    "prodigy": ("prodigyopt", "Prodigy"),
    "schedulefree_adamw": ("schedulefree", "AdamWScheduleFree"),
    "dadapt_adam": ("dadaptation", "DAdaptAdam"),
    "mechanic_adamw": ("mechanic_pytorch", "mechanize"),
}
OWN_SCHEDULE = {"schedulefree_adamw"}  # constant LR, warm-up inside the optimiser


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One group per (component, decay) pair, and per layer of a tower under
    `training.layer_decay` (its factor in `lr_scale`); norms, biases and other 1-D
    parameters get no weight decay. Frozen parameters are included: a component
    frozen until a step (`training.freeze`) then trains without a new optimiser."""
    groups = []
    for name, part in model.components().items():
        scales = layer_scales(part, cfg.layer_decay if name in ("vision", "text") else 1.0)  # towers only
        buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for pname, p in part.named_parameters():
            buckets.setdefault((scales[pname], p.ndim >= 2), []).append(p)
        for (scale, decays), plist in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
            wd = cfg.weight_decay if decays else 0.0
            groups.append({"params": plist, "weight_decay": wd, "name": name, "base_wd": wd, "lr_scale": scale})
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`training.optimizer` over the model's parameter groups."""
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    module, name = PEERS[cfg.optimizer]
    try:
        peer = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ImportError(
            f"training.optimizer={cfg.optimizer!r} needs the package {module!r}: "
            "pip install -e '.[study]' (or use training.optimizer: adamw)"
        ) from exc
    if cfg.optimizer == "prodigy":  # safeguard_warmup: its recommendation when warming up
        return peer(groups, lr=cfg.lr, safeguard_warmup=cfg.warmup_steps > 0)
    if cfg.optimizer == "schedulefree_adamw":
        optimizer = peer(groups, lr=cfg.lr, warmup_steps=cfg.warmup_steps)
        optimizer.train()  # it starts in eval mode; the loop switches it around evaluation
        return optimizer
    if cfg.optimizer == "dadapt_adam":
        return peer(groups, lr=cfg.lr, decouple=True)  # AdamW-style decay
    return _mechanic(peer)(groups, lr=cfg.lr, betas=cfg.betas)


def _mechanic(mechanize):
    """mechanize(AdamW), with a state_dict that survives a checkpoint: Mechanic keys its
    reference point by parameter tensors inside `state["_mechanic"]`, which
    `Optimizer.state_dict` cannot map to indices; here they travel as a list in
    parameter order."""
    base = mechanize(torch.optim.AdamW)

    class MechanicAdamW(base):
        def _params(self) -> list[torch.Tensor]:
            return [p for group in self.param_groups for p in group["params"]]

        def state_dict(self):
            mechanic = self.state.pop("_mechanic", None)
            try:
                state = super().state_dict()
            finally:
                if mechanic is not None:
                    self.state["_mechanic"] = mechanic
            if mechanic is not None:
                params = self._params()
                state["mechanic"] = {
                    "scalars": {k: v for k, v in mechanic.items() if isinstance(k, str)},
                    "per_param": [mechanic[p] if p in mechanic else None for p in params],
                }
            return state

        def load_state_dict(self, state_dict):
            state_dict = dict(state_dict)
            mechanic = state_dict.pop("mechanic", None)
            super().load_state_dict(state_dict)
            if mechanic is not None:
                restored = dict(mechanic["scalars"])
                for p, entry in zip(self._params(), mechanic["per_param"], strict=True):
                    if entry is not None:
                        restored[p] = {k: v.to(p.device) for k, v in entry.items()}
                self.state["_mechanic"] = restored

    return MechanicAdamW


def add_loss_weights(optimizer, params: list[nn.Parameter]) -> None:
    """Learned multi-task loss weights as their own group, "loss_weights" (no decay)."""
    if params:
        optimizer.add_param_group({"params": params, "weight_decay": 0.0, "name": "loss_weights", "base_wd": 0.0})


def set_learning_rates(
    optimizer, cfg: TrainConfig, step: int, total_steps: int, scales: dict, wd_scales: dict | None = None
) -> float:
    """Set each group's LR (schedule x `group_lr` x the adapter's scale x its layer
    decay factor) and weight
    decay for `step`; returns the schedule's base LR (constant for a schedule-free
    optimiser, which warms up by itself)."""
    if cfg.optimizer in OWN_SCHEDULE:
        base = cfg.lr
    else:
        base = cfg.lr * lr_at(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        name = group["name"]
        group["lr"] = base * cfg.group_lr.get(name, 1.0) * scales.get(name, 1.0) * group.get("lr_scale", 1.0)
        group["weight_decay"] = group["base_wd"] * (wd_scales or {}).get(name, 1.0)
    return base


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor) -> None:
    """Step unless `finite` is False. GradScaler handles fp16; fused AdamW takes the
    same `found_inf` flag GradScaler would give it and leaves weights, moments and step
    count untouched, decided on the device (no host sync); a peer optimiser is stepped
    after one host read of `finite`."""
    if scaler.is_enabled():
        scaler.step(optimizer)
        return
    if not (isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")):
        if bool(finite):
            optimizer.step()
        return
    optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def has_eval_mode(optimizer) -> bool:
    """Whether the optimiser keeps a separate iterate to evaluate (schedule-free)."""
    return hasattr(optimizer, "eval") and hasattr(optimizer, "train")


@contextlib.contextmanager
def eval_weights(optimizer):
    """The weights to evaluate: a schedule-free optimiser's averaged iterate, inside
    this block (its `eval()`/`train()` swap); anything else's as they are."""
    swap = has_eval_mode(optimizer)
    if swap:
        optimizer.eval()
    try:
        yield
    finally:
        if swap:
            optimizer.train()
