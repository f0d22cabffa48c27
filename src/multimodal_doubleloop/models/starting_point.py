"""Where a model starts from besides its random init: a previous run of this project,
a timm ViT checkpoint for the vision tower, a Hugging Face BERT checkpoint for the text
tower. Plain data (state dicts, config dicts, the tokenizer's JSON): the catalog reads
the files (`io.InitialWeightsDataset`), this module shapes the model config to the
checkpoints and loads them, and says what it loaded and what it did not.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .pretrained import (
    LoadReport,
    bert_text_config,
    load_hf_bert,
    load_timm_vit,
    resample_pos_embed,
    timm_vit_config,
)

logger = logging.getLogger(__name__)

# What a previous run hands on: its towers and fusion, and heads whose names and
# shapes match (a new task's head, or one with other classes, starts at init).
INHERITED = ("vision", "text", "fusion", "heads")


@dataclass
class StartingPoint:
    previous: dict | None = None  # a trained-model dict of this project: {"config", "state_dict"}
    vision: dict[str, torch.Tensor] | None = None  # timm ViT state dict
    text: dict[str, torch.Tensor] | None = None  # Hugging Face BERT state dict
    text_config: dict | None = None  # its config.json
    tokenizer: str | None = None  # the tokenizer (JSON) that goes with the weights
    sources: dict[str, str] = field(default_factory=dict)  # what was read (URI, sha256): logged, digested
    requested: dict[str, str] = field(default_factory=dict)  # as configured: init_from, vision, text

    @property
    def empty(self) -> bool:
        return self.previous is None and self.vision is None and self.text is None

    def model_config(self, config: dict) -> dict:
        """The resolved model config reshaped to the checkpoints: a previous run's towers
        and fusion; a timm ViT's and a BERT's dimensions. The data's sizes stay (image
        size: position embeddings are resampled; text length: positions are cut); a
        tower wider or narrower than fusion gets `output_dim` (a new Linear)."""
        config = copy.deepcopy(config)
        if self.previous is not None:
            before = self.previous["config"]
            for part in ("vision", "text", "fusion"):
                if before.get(part) is not None and config.get(part) is not None:
                    keep = {k: config[part][k] for k in ("image_size", "vocab_size", "max_length") if k in config[part]}
                    config[part] = {**before[part], **keep}
        fusion_dim = config.get("fusion", {}).get("dim", 128)
        if self.vision is not None:
            own = config["vision"]
            shape = timm_vit_config(self.vision, image_size=own.get("image_size"), heads=None)
            kept = {k: own[k] for k in ("pixel_mean", "pixel_std", "dropout") if k in own}
            config["vision"] = {**shape, **kept, "output_dim": 0 if shape["dim"] == fusion_dim else fusion_dim}
        if self.text is not None:
            shape = bert_text_config(self.text_config or {})
            own = config["text"]
            if own.get("vocab_size") != shape["vocab_size"]:
                raise ValueError(
                    f"the BERT checkpoint has {shape['vocab_size']} tokens but the run's tokenizer "
                    f"{own.get('vocab_size')}: the tokenizer must come from the same directory"
                )
            config["text"] = {**shape, "max_length": own["max_length"], "unpad": own.get("unpad", "auto"),
                              "output_dim": 0 if shape["dim"] == fusion_dim else fusion_dim}
        return config

    def apply(self, model: nn.Module) -> dict[str, LoadReport]:
        """Load every checkpoint into `model` (built from `model_config`); one report each."""
        reports = {}
        if self.previous is not None:
            reports["init_from"] = load_previous(model, self.previous["state_dict"])
        if self.vision is not None:
            reports["vision"] = load_timm_vit(model.vision, self.vision)
        if self.text is not None:
            reports["text"] = load_hf_bert(model.text, self.text)
        for what, report in reports.items():
            logger.info("Initialised from %s (%s): %s", what, self.sources.get(what, "?"), report.summary())
        return reports


def load_previous(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """A previous run's weights, by name where shapes match: towers, fusion and heads
    (position embeddings resampled to this run's image grid). A tensor of another shape
    (e.g. a head with other classes) stays at init and is reported as missing."""
    own = model.state_dict()
    usable, unexpected, resized = {}, [], []
    for key, value in state_dict.items():
        if not key.startswith(tuple(f"{p}." for p in INHERITED)) or key not in own:
            unexpected.append(key)
        elif own[key].shape == value.shape:
            usable[key] = value
        elif key == "vision.pos_embed" and value.shape[-1] == own[key].shape[-1]:
            usable[key] = resample_pos_embed(value, model.vision.cfg.grid)
            resized.append(key)
        else:
            unexpected.append(f"{key} {tuple(value.shape)} (this model: {tuple(own[key].shape)})")
    model.load_state_dict(usable, strict=False)
    return LoadReport(loaded=sorted(usable), missing=sorted(set(own) - set(usable)),
                      unexpected=sorted(unexpected), resized=resized)
