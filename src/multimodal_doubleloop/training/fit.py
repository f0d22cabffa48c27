"""Build the model and train it, in this process or in `world_size` processes.

The one training entry point shared by the Kedro node and the torchrun launcher.
"""

from __future__ import annotations

import torch

from ..data.images import image_store
from ..models import ModelConfig, build_model
from ..models.starting_point import StartingPoint
from . import distributed
from .config import TrainConfig
from .controller import build_adapter, decision_history
from .loop import train
from .state import TrainState


def fit(
    model_config: dict,
    splits: dict,
    images: dict,
    train_cfg: TrainConfig,
    run_config: dict,
    tasks,
    start: StartingPoint | None = None,
) -> tuple[dict, TrainState, dict]:
    """Train on this rank; returns (CPU state dict, final state, controller trace).
    `start` loads pretrained or previous weights over the random init."""
    torch.manual_seed(train_cfg.seed)  # identical initial weights on every rank
    model = build_model(ModelConfig.from_dict(model_config))
    if start is not None and not start.empty:
        start.apply(model, tasks.labels())
    adapter = build_adapter(train_cfg.controller, list(model.parameter_groups(trainable_only=False)), train_cfg.warmup_steps)
    state = train(
        model,
        splits["train"],
        splits.get("val"),
        image_store(images, train=True),
        train_cfg,
        run_config,
        tasks,
        adapter,
        val_images=image_store(images),
    )
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return weights, state, decision_history(adapter.trace) if adapter is not None else {}


def fit_any(model_config, splits, images, train_cfg: TrainConfig, run_config, tasks, start=None):
    """`fit` here, or across `train_cfg.world_size` spawned processes (rank 0's result)."""
    if train_cfg.world_size > 1 and distributed.context().world_size == 1:
        return distributed.spawn(
            fit, train_cfg.world_size, model_config, splits, images, train_cfg, run_config, tasks, start
        )
    return fit(model_config, splits, images, train_cfg, run_config, tasks, start)
