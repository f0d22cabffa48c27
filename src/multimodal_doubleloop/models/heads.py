"""Task heads. Each reads `Features` and returns its task's raw outputs.

- classification / regression / multilabel: an MLP on one pooled feature.
- contrastive: CLIP-style projections of the image and text features into one
  normalised space, with a learnable, clamped temperature.
- caption: a small autoregressive decoder (the shared `Block` with causal
  self-attention and cross-attention) over the fused or the image tokens, with
  greedy and beam-search decoding.

Several heads in one `nn.ModuleDict` make a multi-task model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block, key_padding_mask, run_blocks
from .fusion import Features
from .generation import beam_search, greedy_search

HEAD_INPUTS = ("fused", "image", "text")
# Losses each head type accepts; the first is its default (see `losses.head_loss`).
HEAD_LOSSES = {
    "classification": ("ce", "focal"),
    "regression": ("mse", "l1"),
    "multilabel": ("bce",),
    "contrastive": ("infonce",),
    "caption": ("token_ce",),
}
_COMMON = {"type", "num_outputs", "loss"}
# The fields each head type reads; setting any other field away from its default
# is an error, so a key in the YAML never silently does nothing.
HEAD_FIELDS = {
    "classification": _COMMON | {"hidden", "dropout", "input", "label_smoothing", "focal_gamma"},
    "regression": _COMMON | {"hidden", "dropout", "input"},
    "multilabel": _COMMON | {"hidden", "dropout", "input"},
    "contrastive": _COMMON | {"init_temperature", "max_logit_scale"},
    "caption": _COMMON
    | {
        "dropout",
        "input",
        "label_smoothing",
        "decoder_depth",
        "decoder_heads",
        "mlp_ratio",
        "max_length",
        "bos_id",
        "eos_id",
        "pad_id",
    },
}


@dataclass
class HeadConfig:
    type: str = "classification"  # classification | regression | multilabel | contrastive | caption
    # classes, labels or regression targets; contrastive: embedding size; caption: vocabulary size
    num_outputs: int = 13
    hidden: int = 256  # pooled heads: MLP width; 0 = a single linear layer
    dropout: float = 0.0
    # Which features a pooled head or the caption decoder reads: "fused" works with
    # any modality present; "image"/"text" read one tower and need that modality.
    input: str = "fused"
    loss: str = ""  # "" = the type's default: the first of HEAD_LOSSES[type]
    # classification and caption cross-entropy; None = training.label_smoothing (0 is 0)
    label_smoothing: float | None = None
    focal_gamma: float = 2.0  # loss: focal
    init_temperature: float = 0.07  # contrastive: CLIP's initial softmax temperature
    # contrastive: ceiling on 1/temperature; CLIP clamps at 100 so the scale cannot run away
    max_logit_scale: float = 100.0
    decoder_depth: int = 2  # caption decoder layers
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    max_length: int = 20  # caption positions, [BOS] and [EOS] included; decoding stops here
    # Defaults match data.tokenizer.SPECIAL_TOKENS ([PAD]=0, [BOS]=5, [EOS]=6).
    bos_id: int = 5
    eos_id: int = 6
    pad_id: int = 0

    def __post_init__(self):
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head type {self.type!r}: use one of {sorted(HEAD_TYPES)}")
        if self.num_outputs < 1:
            raise ValueError(f"head num_outputs={self.num_outputs} must be >= 1")
        unread = [
            f.name
            for f in fields(self)
            if f.name not in HEAD_FIELDS[self.type] and getattr(self, f.name) != f.default
        ]
        if unread:
            raise ValueError(
                f"head type {self.type!r} does not read {unread}; remove them "
                f"(it reads {sorted(HEAD_FIELDS[self.type])})"
            )
        if self.input not in HEAD_INPUTS:
            raise ValueError(f"head input={self.input!r}: use one of {HEAD_INPUTS}")
        if self.loss and self.loss not in HEAD_LOSSES[self.type]:
            raise ValueError(
                f"head loss={self.loss!r} does not fit type {self.type!r}: "
                f"use one of {HEAD_LOSSES[self.type]}"
            )
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ValueError(f"head label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.type == "contrastive":
            if self.init_temperature <= 0 or 1 / self.init_temperature > self.max_logit_scale:
                raise ValueError(
                    f"head init_temperature={self.init_temperature} must be > 0 and "
                    f"1/init_temperature <= max_logit_scale={self.max_logit_scale}"
                )
        if self.type == "caption":
            if self.input == "text":
                raise ValueError(
                    "caption head input='text' is not supported: the decoder reads token "
                    "sequences, use input 'fused' or 'image'"
                )
            ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
            if len(set(ids.values())) < 3 or not all(
                0 <= i < self.num_outputs for i in ids.values()
            ):
                raise ValueError(
                    f"caption head {ids} must be distinct ids below num_outputs={self.num_outputs}"
                )
            if self.max_length < 2:
                raise ValueError(f"caption head max_length={self.max_length} must be >= 2")
            if self.decoder_depth < 1:
                raise ValueError(f"caption head decoder_depth={self.decoder_depth} must be >= 1")

    @property
    def loss_kind(self) -> str:
        return self.loss or HEAD_LOSSES[self.type][0]


def _missing(kind: str, cfg: HeadConfig, modality: str) -> ValueError:
    return ValueError(
        f"{kind} head (input={cfg.input!r}) needs {modality} but the batch has none; "
        f"pass {'images=' if modality == 'images' else 'input_ids='} or use a head that "
        "reads the modality present"
    )


def _per_sample(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Per-image rows (M, ...) -> per-sample rows (B, ...) via the image index."""
    return x if index is None else x[index]


class PooledHead(nn.Module):
    """LayerNorm + MLP on one pooled feature: logits or regression values."""

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.hidden:
            self.net = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, cfg.hidden),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, cfg.num_outputs),
            )
        else:
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.num_outputs))
        self.squeeze = cfg.type == "regression" and cfg.num_outputs == 1
        self.reads_fused_tokens = False

    def forward(self, features: Features) -> torch.Tensor:
        if self.cfg.input == "image":
            if features.image_pooled is None:
                raise _missing(self.cfg.type, self.cfg, "images")
            x = _per_sample(features.image_pooled, features.image_index)  # (B, D)
        elif self.cfg.input == "text":
            if features.text_pooled is None:
                raise _missing(self.cfg.type, self.cfg, "text")
            x = features.text_pooled  # (B, D)
        else:
            x = features.pooled  # (B, D)
        out = self.net(x)  # (B, num_outputs)
        return out.squeeze(-1) if self.squeeze else out


@dataclass
class ContrastiveOutput:
    image_embeds: torch.Tensor  # (M, E) unit norm, one row per image
    text_embeds: torch.Tensor  # (B, E) unit norm, one row per text
    logit_scale: torch.Tensor  # () 1/temperature, clamped
    image_index: torch.Tensor | None  # (B,) image row paired with each text; None = row i


class ContrastiveHead(nn.Module):
    """CLIP-style: linear projections of image and text pooled features, L2-normalised."""

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Linear(dim, cfg.num_outputs, bias=False)
        self.text_proj = nn.Linear(dim, cfg.num_outputs, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.max_log_scale = math.log(cfg.max_logit_scale)
        self.reads_fused_tokens = False

    def forward(self, features: Features) -> ContrastiveOutput:
        if features.image_pooled is None:
            raise _missing("contrastive", self.cfg, "images")
        if features.text_pooled is None:
            raise _missing("contrastive", self.cfg, "text")
        image = F.normalize(self.image_proj(features.image_pooled), dim=-1)  # (M, E)
        text = F.normalize(self.text_proj(features.text_pooled), dim=-1)  # (B, E)
        # Clamped in the forward pass (not after the optimiser step) so the head
        # alone guarantees the bound; scale stays in [1, max_logit_scale].
        scale = self.logit_scale.clamp(0.0, self.max_log_scale).exp()
        return ContrastiveOutput(image, text, scale, features.image_index)


class CaptionHead(nn.Module):
    """Autoregressive decoder: causal self-attention, cross-attention to features.

    Teacher-forced `forward(features, caption_ids)` returns next-token logits at
    every position; `greedy` and `beam` generate. Caption ids start with [BOS];
    generated ids exclude it, end with [EOS] where one was produced, then [PAD].
    """

    def __init__(self, dim: int, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.num_outputs, dim)
        self.pos_embed = nn.Embedding(cfg.max_length, dim)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_heads, cfg.mlp_ratio, cfg.dropout, cross=True)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, cfg.num_outputs, bias=False)
        self.lm_head.weight = self.token_embed.weight  # tied input/output embeddings
        self.grad_checkpointing = False
        self.reads_fused_tokens = cfg.input == "fused"  # the decoder cross-attends them

    def _memory(self, features: Features):
        """(memory, memory_mask, memory_index, rows): what the decoder cross-attends to."""
        if self.cfg.input == "image":
            if features.image_tokens is None:
                raise _missing("caption", self.cfg, "images")
            memory = torch.cat([features.image_pooled.unsqueeze(1), features.image_tokens], 1)
            index = features.image_index  # (B,) or None: one caption per image
            rows = memory.shape[0] if index is None else index.shape[0]
            return memory, None, index, rows  # (M, 1+N, D)
        if features.tokens is None:
            raise ValueError(
                "caption head input='fused' reads the fused tokens, which these features "
                "left out: compute them with model.features(..., fused_tokens=True)"
            )
        mask = key_padding_mask(features.token_mask)  # (B, 1, T)
        return features.tokens, mask, None, features.tokens.shape[0]

    def decode(
        self,
        ids: torch.Tensor,  # (N, t) prefixes starting with [BOS]
        memory: torch.Tensor,  # (M, S, D)
        memory_mask: torch.Tensor | None,  # (N, 1, S)
        memory_index: torch.Tensor | None,  # (N,) memory row of each prefix
    ) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.cfg.max_length:
            raise ValueError(
                f"caption length {t} exceeds the caption head's max_length={self.cfg.max_length}"
            )
        x = self.token_embed(ids) + self.pos_embed.weight[:t]  # (N, t, D)
        x = run_blocks(
            self.blocks,
            x,
            self.grad_checkpointing,
            memory=memory,
            memory_mask=memory_mask,
            memory_index=memory_index,
            causal=True,
        )
        return self.lm_head(self.norm(x))  # (N, t, V)

    def forward(self, features: Features, caption_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits (B, L, V); position t predicts caption_ids[:, t + 1]."""
        if caption_ids is None:
            raise ValueError(
                "the caption head needs caption_ids (B, L) for teacher forcing: call "
                "model.features(...) then model.heads[name](features, caption_ids); "
                "use .greedy() or .beam() to generate"
            )
        memory, mask, index, rows = self._memory(features)
        if caption_ids.shape[0] != rows:
            raise ValueError(f"caption_ids has {caption_ids.shape[0]} rows, features have {rows}")
        return self.decode(caption_ids, memory, mask, index)

    def _step_fn(self, features: Features) -> tuple[Callable, int]:
        memory, mask, index, rows = self._memory(features)

        def step(prefix: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            # Beams and unfinished rows share their sample's memory through the
            # gather index instead of copies of it.
            memory_index = sample if index is None else index[sample]
            memory_mask = None if mask is None else mask[sample]
            logits = self.decode(prefix, memory, memory_mask, memory_index)[:, -1]
            return logits.float().log_softmax(-1)  # (N, V)

        return step, rows

    def _new_tokens(self, max_length: int | None) -> int:
        max_length = self.cfg.max_length if max_length is None else max_length
        if not 2 <= max_length <= self.cfg.max_length:
            raise ValueError(
                f"max_length={max_length} must be in [2, caption max_length={self.cfg.max_length}]"
            )
        return max_length - 1  # [BOS] takes one position

    @torch.no_grad()
    def greedy(self, features: Features, max_length: int | None = None) -> torch.Tensor:
        """Greedy decoding -> (B, L) ids, L <= max_length - 1. Call in eval mode."""
        step, rows = self._step_fn(features)
        return greedy_search(
            step,
            rows,
            self.cfg.bos_id,
            self.cfg.eos_id,
            self.cfg.pad_id,
            self._new_tokens(max_length),
            features.pooled.device,
        )

    @torch.no_grad()
    def beam(
        self,
        features: Features,
        beam_size: int = 4,
        max_length: int | None = None,
        length_penalty: float = 0.0,
    ) -> torch.Tensor:
        """Beam search -> (B, L) ids of each sample's best hypothesis; beam_size=1 is greedy."""
        step, rows = self._step_fn(features)
        return beam_search(
            step,
            rows,
            beam_size,
            self.cfg.bos_id,
            self.cfg.eos_id,
            self.cfg.pad_id,
            self._new_tokens(max_length),
            features.pooled.device,
            length_penalty,
        )


HEAD_TYPES = {
    "classification": PooledHead,
    "regression": PooledHead,
    "multilabel": PooledHead,
    "contrastive": ContrastiveHead,
    "caption": CaptionHead,
}


def build_head(dim: int, cfg: HeadConfig) -> nn.Module:
    return HEAD_TYPES[cfg.type](dim, cfg)
