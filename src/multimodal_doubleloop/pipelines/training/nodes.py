"""Training node: build the configured model and train it on the encoded samples."""

from __future__ import annotations

import copy
import hashlib
import logging

import pandas as pd
from tokenizers import Tokenizer

from ...data.batching import encoded_split
from ...data.images import image_store
from ...models import ModelConfig, build_model
from ...training.config import TrainConfig
from ...training.loop import train

logger = logging.getLogger(__name__)


def resolve_model_config(model_params: dict, vocab_size: int, max_length: int, num_answers: int) -> dict:
    """The chosen preset, completed with sizes only the data knows."""
    preset = model_params["preset"]
    presets = model_params["presets"]
    if preset not in presets:
        raise ValueError(f"model.preset={preset!r} is not in model.presets {sorted(presets)}")
    config = copy.deepcopy(presets[preset])
    if config.get("text") is not None:
        config["text"] = {**config.get("text", {}), "vocab_size": vocab_size, "max_length": max_length}
    heads = config.setdefault("heads", {"answer": {"type": "classification"}})
    heads.setdefault("answer", {"type": "classification"})
    heads["answer"]["num_outputs"] = num_answers
    ModelConfig.from_dict(config)  # fail now, before any work, if the preset is invalid
    return config


def train_model(
    samples: pd.DataFrame,
    images: dict,
    encoded_texts: dict,
    answer_vocab: list[str],
    tokenizer: str,
    model_params: dict,
    training_params: dict,
) -> tuple[dict, dict, list[dict]]:
    """Returns the trained model (config + weights), MLflow metric histories and
    the per-epoch history table."""
    train_cfg = TrainConfig.from_dict(training_params)
    vocab_size = Tokenizer.from_str(tokenizer).get_vocab_size()
    model_config = resolve_model_config(
        model_params, vocab_size, encoded_texts["input_ids"].shape[1], len(answer_vocab)
    )
    model = build_model(ModelConfig.from_dict(model_config))
    logger.info("Model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    store = image_store(images)
    splits = {
        s: encoded_split(samples, encoded_texts, images["image_ids"], answer_vocab, s)
        for s in ("train", "val")
    }
    run_config = {
        "model": model_config,
        "training": train_cfg.to_dict(),
        "data": {
            "train_samples": len(splits["train"]),
            "tokenizer_sha256": hashlib.sha256(tokenizer.encode()).hexdigest(),
        },
    }
    state = train(model, splits["train"], splits["val"], store, train_cfg, run_config)
    curves = {
        key: [{"step": row["epoch"], "value": float(row[key])} for row in state.history if key in row]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "questions_per_s")
    }
    curves["step_loss"] = [{"step": r["step"], "value": r["loss"]} for r in state.step_log]
    curves["lr"] = [{"step": r["step"], "value": r["lr"]} for r in state.step_log]
    trained = {
        "config": model_config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return trained, {k: v for k, v in curves.items() if v}, state.history
