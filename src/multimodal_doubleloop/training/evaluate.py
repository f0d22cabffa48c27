"""Scoring a split with the model in eval mode: the tasks' losses, hits and outputs."""

from __future__ import annotations

import torch
from torch import nn

from ..data.batching import EncodedSplit, ImageMajorBatches, batch_stream, to_device
from ..tasks import Evaluation, TaskSet
from .config import TrainConfig
from .precision import resolve_precision


@torch.no_grad()
def evaluate(model: nn.Module, split: EncodedSplit, images, cfg: TrainConfig, tasks: TaskSet) -> dict:
    """Loss (the tasks' training objectives), accuracy (the primary task's) and per-task
    outputs over a split (see `tasks.Evaluation.result`); per-sample
    predictions/probabilities when the primary task is a classification."""
    device = next(model.parameters()).device
    dtype = resolve_precision(cfg.precision, device)
    sampler = ImageMajorBatches(split.image_rows, cfg.images_per_batch * 4, shuffle=False)
    was_training = model.training
    model.eval()
    run = Evaluation(tasks)
    for idx, batch in zip(sampler, batch_stream(split, images, sampler, cfg.num_workers), strict=True):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            run.add(model, to_device(batch, device), torch.as_tensor(idx))
    model.train(was_training)
    return run.result(split)
