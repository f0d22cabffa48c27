"""Fusion of image and text features: early (cross-attention) or late (pooled)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import (
    Block,
    Grouping,
    Packing,
    key_padding_mask,
    run_block,
    run_blocks,
    unpad_setting,
    unpadded,
)

FUSION_KINDS = ("early", "late", "hybrid")
LATE_MODES = ("concat", "product", "gated")


@dataclass
class FusionConfig:
    # "early": text tokens cross-attend image tokens; "late": pooled features only;
    # "hybrid": early fusion tokens, pooled = early CLS + late fusion of the towers'
    # pooled features (the multiplicative path makes "is there a red shape?" easy to learn).
    kind: str = "early"
    dim: int = 128
    depth: int = 2  # early fusion layers
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    late_mode: str = "product"  # how late fusion combines pooled features
    # Early-fusion pooled feature: the fused [CLS], or the mean over real fused text
    # tokens (a question word that has just read the image then reaches the head
    # directly, without another layer for [CLS] to gather it).
    pool: str = "cls"
    # Early fusion on the real text tokens only: per-token layers skip the padding, and
    # cross-attention puts all tokens of one image's questions into one query sequence
    # against that image's keys/values (`blocks.Grouping`) instead of a copy of them per
    # question. Same values; "auto" does so on CPU (on an accelerator the token counts
    # would be a host sync). auto | on | off.
    unpad: str | bool = "auto"

    def __post_init__(self):
        self.unpad = unpad_setting(self.unpad, "fusion.unpad")
        if self.kind not in FUSION_KINDS:
            raise ValueError(f"fusion.kind={self.kind!r}: use one of {FUSION_KINDS}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"fusion.pool={self.pool!r}: use 'cls' or 'mean'")
        if self.late_mode not in LATE_MODES:
            raise ValueError(f"fusion.late_mode={self.late_mode!r}: use one of {LATE_MODES}")


@dataclass
class Features:
    """What the heads read. Per-sample tensors have B rows, per-image ones M rows."""

    pooled: torch.Tensor  # (B, D) fused, per sample
    tokens: torch.Tensor | None  # (B, T, D) fused sequence, per sample; None = not asked for
    token_mask: torch.Tensor  # (B, T) bool, True = real
    image_pooled: torch.Tensor | None = None  # (M, D)
    image_tokens: torch.Tensor | None = None  # (M, N, D)
    text_pooled: torch.Tensor | None = None  # (B, D)
    image_index: torch.Tensor | None = None  # (B,) row of the image of each sample


def _all_true(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


class EarlyFusion(nn.Module):
    """Text tokens attend to their own image's patch tokens, several layers deep.

    Modality-type embeddings mark which stream a token came from. With one modality
    absent the layers run self-attention only on the one present.
    """

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.pool, self.unpad = cfg.pool, cfg.unpad
        self.modality_embed = nn.Embedding(2, cfg.dim)  # 0 = text, 1 = image
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, cross=True)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.grad_checkpointing = False

    def forward(
        self,
        image: tuple[torch.Tensor, torch.Tensor] | None,
        text: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        image_index: torch.Tensor | None,
        tokens: bool = True,
    ) -> Features:
        """`tokens=False`: no reader wants the fused token sequence (`Features.tokens` is
        None), so with [CLS] pooling the last layer runs for [CLS] alone."""
        if image is None and text is None:
            raise ValueError("fusion needs at least one modality (images or input_ids)")
        image_pooled = image_tokens = text_pooled = None
        if image is not None:
            image_pooled, image_tokens = image
        if text is None:
            # Image only: the patch tokens are the sequence, CLS the pooled feature.
            x = torch.cat([image_pooled.unsqueeze(1), image_tokens], 1) + self.modality_embed.weight[1]
            x = self.norm(run_blocks(self.blocks, x, self.grad_checkpointing))
            return Features(x[:, 0], x, _all_true(x), image_pooled, image_tokens, None, image_index)
        text_pooled, text_tokens, text_mask = text
        x = text_tokens + self.modality_embed.weight[0]  # (B, T, D)
        memory = None
        if image_tokens is not None:
            memory = torch.cat([image_pooled.unsqueeze(1), image_tokens], 1)  # (M, 1+N, D)
            memory = memory + self.modality_embed.weight[1]
        mask = key_padding_mask(text_mask)
        packed = unpadded(self.unpad, x.device)
        # Only [CLS] is read: the last layer runs for it alone (`Block.forward_first`).
        first_only = (
            not tokens and self.pool == "cls" and len(self.blocks) > 0
            and (not packed or bool(text_mask[:, 0].all()))
        )
        last = len(self.blocks) - 1 if first_only else len(self.blocks)
        if packed:
            packing = Packing(text_mask)
            x = packing.pack(x)
            context = {"mask": mask, "memory": memory, "packing": packing, "grouping": None}
            first_context = dict(context)
            if memory is not None:
                rows = packing.rows()  # text row of each real token -> its image row
                groups = rows if image_index is None else image_index[rows]
                context["grouping"] = Grouping(groups, memory.shape[0])
                if first_only and image_index is not None:  # the [CLS] rows by image
                    first_context["grouping"] = Grouping(image_index, memory.shape[0])
        else:
            context = first_context = {"mask": mask, "memory": memory, "memory_index": image_index}
        x = run_blocks(self.blocks[:last], x, self.grad_checkpointing, **context)
        if first_only:
            x = run_block(self.blocks[last].forward_first, x, self.grad_checkpointing, **first_context)
        x = self.norm(x)
        if first_only:  # x is (B, 1, D): no token sequence to hand on
            return Features(
                x[:, 0], None, text_mask.bool(), image_pooled, image_tokens, text_pooled, image_index
            )
        if packed:
            x = packing.unpack(x)  # zeros at the padding
        if self.pool == "cls":
            pooled = x[:, 0]
        else:
            weights = text_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return Features(
            pooled, x, text_mask.bool(), image_pooled, image_tokens, text_pooled, image_index
        )


class LateFusion(nn.Module):
    """Encode separately, combine pooled features by concat, product or a gate."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.mode = cfg.late_mode
        d = cfg.dim
        self.image_proj, self.text_proj = nn.Linear(d, d), nn.Linear(d, d)
        if self.mode == "concat":
            self.combine = nn.Linear(2 * d, d)
        elif self.mode == "gated":
            self.gate = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, image, text, image_index, tokens: bool = True) -> Features:
        if image is None and text is None:
            raise ValueError("fusion needs at least one modality (images or input_ids)")
        image_pooled = image_tokens = text_pooled = None
        if image is not None:
            image_pooled, image_tokens = image
        if text is not None:
            text_pooled, text_tokens, text_mask = text
        if text is None:
            pooled = self.norm(self.image_proj(image_pooled))
            return Features(pooled, image_tokens, _all_true(image_tokens), image_pooled, image_tokens)
        if image is None:
            pooled = self.norm(self.text_proj(text_pooled))
            return Features(pooled, text_tokens, text_mask.bool(), text_pooled=text_pooled)
        img = image_pooled if image_index is None else image_pooled[image_index]  # (B, D)
        i, t = self.image_proj(img), self.text_proj(text_pooled)
        if self.mode == "concat":
            pooled = self.combine(torch.cat([i, t], -1))
        elif self.mode == "product":
            pooled = i * t
        else:
            g = torch.sigmoid(self.gate(torch.cat([i, t], -1)))
            pooled = g * i + (1 - g) * t
        return Features(
            self.norm(pooled),
            text_tokens,
            text_mask.bool(),
            image_pooled,
            image_tokens,
            text_pooled,
            image_index,
        )


class HybridFusion(nn.Module):
    """Early fusion for the token stream; its pooled feature plus a late fusion of
    the towers' pooled features for the heads."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.early, self.late = EarlyFusion(cfg), LateFusion(cfg)

    @property
    def grad_checkpointing(self) -> bool:
        return self.early.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enabled: bool) -> None:
        self.early.grad_checkpointing = enabled

    def forward(self, image, text, image_index, tokens: bool = True) -> Features:
        features = self.early(image, text, image_index, tokens)
        if image is not None and text is not None:
            features.pooled = features.pooled + self.late(image, text, image_index).pooled
        return features


def build_fusion(cfg: FusionConfig) -> nn.Module:
    return {"early": EarlyFusion, "late": LateFusion, "hybrid": HybridFusion}[cfg.kind](cfg)
