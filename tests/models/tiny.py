"""Tiny model configs and batches shared by the model tests."""

from __future__ import annotations

import copy

import torch

from multimodal_doubleloop.models import ModelConfig, build_model

DIM = 32
VOCAB = 60
TINY = {
    "vision": {
        "image_size": 32,
        "patch_size": 8,
        "stem_channels": [8],
        "dim": DIM,
        "depth": 2,
        "heads": 2,
    },
    "text": {"vocab_size": VOCAB, "max_length": 16, "dim": DIM, "depth": 2, "heads": 2},
    "fusion": {"kind": "early", "dim": DIM, "depth": 2, "heads": 2},
    "heads": {"answer": {"type": "classification", "num_outputs": 5, "hidden": 16}},
}


def tiny_config(fusion: str = "early", heads: dict | None = None, **parts) -> dict:
    """TINY with the given fusion kind, heads and replaced parts (None drops a tower)."""
    cfg = copy.deepcopy(TINY)
    cfg["fusion"]["kind"] = fusion
    if heads is not None:
        cfg["heads"] = heads
    cfg.update(parts)
    return cfg


def build(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_dict(cfg))


def tiny_model(fusion: str = "early", heads: dict | None = None, seed: int = 0, **parts):
    return build(tiny_config(fusion, heads, **parts), seed)


def tiny_batch(images: int = 3, texts: int = 5, length: int = 10, seed: int = 0) -> dict:
    """Image-major batch: `images` unique images, `texts` questions pointing at them,
    ragged text lengths padded with id 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (texts,), generator=g)
    lengths[0] = length  # at least one full-length row
    mask = (torch.arange(length)[None] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(7, VOCAB, (texts, length), generator=g) * mask
    ids[:, 0] = 2  # [CLS]
    index = torch.arange(texts) % images
    return {
        # noise around a colour of each image's own, so images differ as real ones do
        "images": 0.5 * torch.rand(images, 3, 1, 1, generator=g)
        + 0.5 * torch.rand(images, 3, 32, 32, generator=g),
        "image_index": index,
        "input_ids": ids,
        "attention_mask": mask,
    }
