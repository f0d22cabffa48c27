"""Model presets: `params:model` (a preset name and the presets) made into one model
config, completed with the sizes only the data knows."""

from __future__ import annotations

import copy
from collections.abc import Callable

from .multimodal import ModelConfig


def resolve_model_config(
    model_params: dict,
    vocab_size: int,
    max_length: int,
    num_answers: int = 0,
    heads: Callable[[dict, dict], dict[str, dict]] | None = None,
) -> dict:
    """The chosen preset with the text tower's vocabulary and length. `heads(preset_heads,
    sizes)` builds one head per task (the task layer's `TaskSet.head_configs`; `sizes`:
    vocab_size, max_length, dim); without it the preset's `answer` classification head
    gets `num_answers` outputs. Fails here, before any work, if the result is invalid."""
    preset = model_params["preset"]
    presets = model_params["presets"]
    if preset not in presets:
        raise ValueError(f"model.preset={preset!r} is not in model.presets {sorted(presets)}")
    config = copy.deepcopy(presets[preset])
    if config.get("text") is not None:
        config["text"] = {**config.get("text", {}), "vocab_size": vocab_size, "max_length": max_length}
    if heads is not None:
        dim = config.get("fusion", {}).get("dim", ModelConfig().fusion.dim)
        sizes = {"vocab_size": vocab_size, "max_length": max_length, "dim": dim}
        config["heads"] = heads(config.get("heads") or {}, sizes)
    else:
        answer = config.setdefault("heads", {"answer": {"type": "classification"}})
        answer.setdefault("answer", {"type": "classification"})
        answer["answer"]["num_outputs"] = num_answers
    ModelConfig.from_dict(config)
    return config
