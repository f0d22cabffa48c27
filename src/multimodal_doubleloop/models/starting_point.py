"""Where a model starts from besides its random init: a previous run of this project,
a timm ViT checkpoint for the vision tower, a Hugging Face BERT checkpoint for the text
tower. Plain data (state dicts, config dicts, the tokenizer's JSON): the catalog reads
the files (`io.InitialWeightsDataset`), this module shapes the model config to the
checkpoints and loads them. A load that leaves part of a tower at init fails, naming
the tensors; what is new by design (a projection to fusion's width, a head for other
classes) is reported.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .fusion import FusionConfig
from .pretrained import (
    LoadReport,
    bert_text_config,
    load_hf_bert,
    load_timm_vit,
    resample_pos_embed,
    timm_vit_config,
)

logger = logging.getLogger(__name__)

TOWERS_AND_FUSION = ("vision", "text", "fusion")  # what a previous run must hand on whole


@dataclass
class StartingPoint:
    previous: dict | None = None  # a trained-model dict of this project: {"config", "state_dict", "labels"?}
    vision: dict[str, torch.Tensor] | None = None  # timm ViT state dict
    text: dict[str, torch.Tensor] | None = None  # Hugging Face BERT state dict
    text_config: dict | None = None  # its config.json
    tokenizer: str | None = None  # the tokenizer (JSON) that goes with the weights
    tokenizer_sha256: str | None = None  # a checkpoint's record of its tokenizer, when the JSON is not at hand
    sources: dict[str, str] = field(default_factory=dict)  # what was read (URI, content digest): logged, digested
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
            for part in TOWERS_AND_FUSION:
                if before.get(part) is not None and config.get(part) is not None:
                    keep = {k: config[part][k] for k in ("image_size", "vocab_size", "max_length") if k in config[part]}
                    config[part] = {**before[part], **keep}
        fusion_dim = config.get("fusion", {}).get("dim", FusionConfig().dim)
        for part in ("vision", "text"):
            if getattr(self, part) is not None and config.get(part) is None:
                raise ValueError(f"model.pretrained.{part} is set but the preset has no {part} tower: "
                                 f"give it one or leave model.pretrained.{part} empty")
        if self.vision is not None:
            own = config["vision"]
            shape = timm_vit_config(self.vision, image_size=own.get("image_size"))
            kept = {k: own[k] for k in ("pixel_mean", "pixel_std", "dropout") if k in own}
            config["vision"] = {**shape, **kept, "output_dim": 0 if shape["dim"] == fusion_dim else fusion_dim}
        if self.text is not None:
            shape, own = bert_text_config(self.text_config or {}), config["text"]
            if own.get("vocab_size") != shape["vocab_size"]:
                raise ValueError(
                    f"the BERT config.json says vocab_size={shape['vocab_size']} but its tokenizer has "
                    f"{own.get('vocab_size')} tokens: fix the directory so that they agree"
                )
            kept = {k: own[k] for k in ("max_length", "unpad", "dropout") if k in own}
            config["text"] = {**shape, **kept, "output_dim": 0 if shape["dim"] == fusion_dim else fusion_dim}
        return config

    def apply(self, model: nn.Module, labels: dict[str, list[str]] | None = None) -> dict[str, LoadReport]:
        """Load every checkpoint into `model` (built from `model_config`); one report
        each. `labels` (head -> class names) decides which of a previous run's heads fit."""
        reports = {}
        if self.previous is not None:
            reports["init_from"] = load_previous(model, self.previous, labels or {})
        if self.vision is not None:
            reports["vision"] = _whole(load_timm_vit(model.vision, self.vision), "model.pretrained.vision")
        if self.text is not None:
            reports["text"] = _whole(load_hf_bert(model.text, self.text), "model.pretrained.text")
        for what, report in reports.items():
            logger.info("Initialised from %s (%s): %s", what, self.sources.get(what, "?"), report.summary())
        return reports


def _whole(report: LoadReport, what: str) -> LoadReport:
    """A pretrained tower loads whole: only the new projection to fusion may stay at init."""
    left = [k for k in report.missing if not k.startswith("out_proj.")]
    if left:
        raise ValueError(f"{what} left {len(left)} tensor(s) of the tower at init: {left}; "
                         "the checkpoint lacks them (a truncated or other-architecture file?)")
    return report


def load_previous(model: nn.Module, previous: dict, labels: dict[str, list[str]]) -> LoadReport:
    """A previous run's weights by name: its towers and fusion whole (position
    embeddings resampled to this run's image grid), and each head whose class names
    (`labels`) and shapes match this run's. A head for other classes starts at init and
    is reported as missing; a tower or fusion tensor that does not fit fails."""
    own, state_dict = model.state_dict(), previous["state_dict"]
    before = previous.get("labels") or {}
    usable, unexpected, resized = {}, [], []
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        head = rest.partition(".")[0] if part == "heads" else None
        if key not in own or (head is not None and before.get(head) != labels.get(head)):
            unexpected.append(key)
        elif own[key].shape == value.shape:
            usable[key] = value
        elif key == "vision.pos_embed" and value.shape[-1] == own[key].shape[-1]:
            usable[key] = resample_pos_embed(value, model.vision.cfg.grid)
            resized.append(key)
        else:
            unexpected.append(f"{key} {tuple(value.shape)} (this model: {tuple(own[key].shape)})")
    handed = {k.partition(".")[0] for k in state_dict} & set(TOWERS_AND_FUSION)
    left = sorted(k for k in own if k.partition(".")[0] in handed and k not in usable)
    if left:
        raise ValueError(f"model.init_from: the previous run's {sorted(handed)} do not fit this model: {left} "
                         f"(unused: {unexpected[:8]})")
    model.load_state_dict(usable, strict=False)
    return LoadReport(loaded=sorted(usable), missing=sorted(set(own) - set(usable)),
                      unexpected=sorted(unexpected), resized=resized)
