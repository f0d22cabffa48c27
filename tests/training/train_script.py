"""A tiny, deterministic training run in its own process, for the fault tests.

    python tests/training/train_script.py CHECKPOINT_DIR OUTPUT_FILE [SLOW_FSYNC_STEP]

Trains the tiny model on a real easy-VQA slice, saves the final weights and history
to OUTPUT_FILE. With SLOW_FSYNC_STEP, fsync sleeps while writing that step's
checkpoint, so a test can kill the process mid-write.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

torch.set_num_threads(1)


def main() -> None:
    checkpoint_dir, output = sys.argv[1], sys.argv[2]
    slow_step = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if slow_step is not None:
        from multimodal_doubleloop.training import checkpoint

        real_fsync = os.fsync

        def slow_fsync(fd):
            name = os.readlink(f"/proc/self/fd/{fd}")
            if f"step_{slow_step:08d}.pt.tmp" in name:
                time.sleep(30)
            real_fsync(fd)

        checkpoint.os.fsync = slow_fsync

    from conftest import TINY_MODEL

    from multimodal_doubleloop.data.batching import encoded_split
    from multimodal_doubleloop.data.images import image_store
    from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
    from multimodal_doubleloop.models.starting_point import StartingPoint
    from multimodal_doubleloop.pipelines.ingestion.nodes import decode_images, ingest_samples
    from multimodal_doubleloop.pipelines.tokenization.nodes import (
        build_answer_vocab,
        encode_texts,
        fit_tokenizer,
    )
    from multimodal_doubleloop.tasks import TaskSet
    from multimodal_doubleloop.training.config import TrainConfig
    from multimodal_doubleloop.training.loop import train

    ingestion = {"source": "easy_vqa", "val_fraction": 0.0, "seed": 0, "image_size": 64,
                 "in_memory_images": True, "max_images_per_split": 40}
    from layouts import load_raw

    annotations, raw_images = load_raw("easy_vqa")
    samples = ingest_samples(annotations, raw_images, ingestion)
    images = decode_images(samples, raw_images, ingestion)
    tok_params = {"vocab_size": 200, "min_frequency": 1, "max_length": 16}
    tokenizer = fit_tokenizer(samples, StartingPoint(), tok_params)
    encoded = encode_texts(samples, tokenizer, tok_params)
    vocab = build_answer_vocab(samples)
    config = resolve_model_config(TINY_MODEL, 200, 16, len(vocab))
    split = encoded_split(samples, encoded, images["image_ids"], vocab, "train")
    cfg = TrainConfig.from_dict(
        {"epochs": 3, "images_per_batch": 4, "lr": 3e-3, "warmup_steps": 2,
         "checkpoint_dir": checkpoint_dir, "checkpoint_every": 2, "progress_bar": False}
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config))
    state = train(model, split, None, image_store(images), cfg, {"model": config, "training": cfg.to_dict()},
                  TaskSet.answer_only())
    torch.save({"state_dict": model.state_dict()}, output)
    with open(output + ".json", "w") as f:
        json.dump({"step": state.step, "history": state.history}, f)


if __name__ == "__main__":
    main()
