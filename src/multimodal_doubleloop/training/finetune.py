"""Fine-tuning controls: components frozen until a step, layer-wise LR decay.

`training.freeze: {vision: 500}` keeps the vision tower's weights (and batch-norm
statistics) fixed for the first 500 optimiser steps (`true`: the whole run). A frozen component computes no weight
gradients (its backward is skipped where nothing before it trains) and AdamW leaves
its weights, moments and weight decay alone. The optimiser holds every parameter
from the start, so unfreezing needs no new optimiser and a resumed run freezes
exactly what the uninterrupted one did at that step.

`training.layer_decay: d` (BEiT, ELECTRA): in a tower of L blocks, block i (0-based)
trains at d^(L - i) of its group's LR, the embeddings (patch/token/position, conv
stem) at d^(L + 1), the final norm and output projection at 1; fusion and heads at 1.
The factor multiplies the schedule, `group_lr` and the outer loop's per-group scale.
"""

from __future__ import annotations

import logging
import re

from torch import nn

logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_TOP = ("norm.", "out_proj.")  # after the last block: a tower's final norm and projection


def frozen(until: int | bool, step: int) -> bool:
    """Whether a component with `training.freeze` value `until` is frozen at `step`."""
    return until is True or (until is not False and step < until)


def apply_freeze(model: nn.Module, freeze: dict[str, int | bool], step: int) -> list[str]:
    """Set `requires_grad` of each component in `freeze` for `step`; returns the
    components whose state changed (logged), so calling it every step is cheap."""
    changed = []
    for name, until in freeze.items():
        if name not in model.components():
            raise ValueError(f"training.freeze.{name}: this model has no {name} component")
        want = not frozen(until, step)
        if any(p.requires_grad != want for p in model.components()[name].parameters()):
            model.freeze(name, frozen=not want)  # batch norms of a frozen part stay as loaded
            changed.append(name)
            logger.info("training.freeze: %s %s at step %d", name, "trains" if want else "frozen", step)
    return changed


def layer_scales(part: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name (within `part`) -> LR factor under layer-wise decay `decay`.

    Only towers (modules with `blocks`) decay; anything else gets 1 everywhere."""
    depth = len(getattr(part, "blocks", ()))
    scales = {}
    for name, _ in part.named_parameters():
        if decay == 1 or not depth:
            layer = depth + 1
        elif (m := _BLOCK.match(name)) is not None:
            layer = int(m.group(1)) + 1
        elif name.startswith(_TOP):
            layer = depth + 1
        else:  # embeddings, class token, conv stem
            layer = 0
        scales[name] = decay ** (depth + 1 - layer)
    return scales
