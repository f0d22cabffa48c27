"""BERT-style text encoder: token + position + segment embeddings, masked attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import Block, Packing, key_padding_mask, run_blocks, unpad_setting, unpadded


@dataclass
class TextConfig:
    vocab_size: int = 1000  # overwritten by the trained tokenizer's size
    max_length: int = 32
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    type_vocab_size: int = 2  # BERT segments A/B
    pad_id: int = 0
    # Pooled feature: the [CLS] token, or the mean over real tokens (at initialisation
    # [CLS] is nearly the same vector for every text; the mean is not).
    pool: str = "cls"
    # Run the per-token layers on the real tokens only (`blocks.Packing`), and each
    # distinct text of a batch once (`MultimodalModel`; not under active dropout):
    # "auto" does on CPU; on an accelerator counting tokens or texts would be a host sync.
    unpad: str | bool = "auto"  # auto | on | off (YAML on/off arrive as booleans)
    norm_eps: float = 1e-5  # LayerNorm epsilon; BERT's pretrained weights use 1e-12
    # "pre": pre-norm blocks and a final norm (trains stably from scratch). "post": BERT's
    # post-norm blocks and no final norm, to run its pretrained weights as trained.
    norm: str = "pre"
    # Width of the features handed on: 0 = dim; otherwise a Linear(dim, output_dim) on
    # pooled and tokens, so a pretrained tower of another width can feed fusion.
    output_dim: int = 0

    def __post_init__(self):
        self.unpad = unpad_setting(self.unpad, "text.unpad")
        if self.vocab_size < 2:
            raise ValueError(f"text.vocab_size={self.vocab_size} must be >= 2")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"text.pool={self.pool!r}: use 'cls' or 'mean'")
        if self.max_length < 1:
            raise ValueError(f"text.max_length={self.max_length} must be >= 1")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"text.norm={self.norm!r}: use 'pre' or 'post' (BERT checkpoints)")
        if self.norm_eps <= 0:
            raise ValueError(f"text.norm_eps={self.norm_eps} must be > 0 (BERT: 1e-12)")
        if self.output_dim < 0:
            raise ValueError(f"text.output_dim={self.output_dim}: use 0 (= dim) or a width > 0")

    @property
    def out_dim(self) -> int:
        """Width of the pooled and token features the tower returns."""
        return self.output_dim or self.dim


class TextEncoder(nn.Module):
    """Token ids (B, T) + attention mask (B, T) -> pooled (B, D), tokens (B, T, D),
    D = `cfg.out_dim`.

    Pooled is the first ([CLS]) token or the masked mean (`pool`). Padded positions never influence real tokens:
    they are masked out as keys in every attention layer. Unpadded (`unpad`), their
    outputs are zeros; otherwise they are computed and meaningless.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Embedding(cfg.max_length, cfg.dim)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.embed_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        post = cfg.norm == "post"
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, eps=cfg.norm_eps, post_norm=post)
            for _ in range(cfg.depth)
        )
        # Post-norm blocks end in a norm already (BERT has no final one).
        self.norm = nn.Identity() if post else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # Identity has no parameters: towers without output_dim keep their state dict.
        self.out_proj = nn.Linear(cfg.dim, cfg.output_dim) if cfg.output_dim else nn.Identity()
        self.grad_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T), 1 = real token
        token_type_ids: torch.Tensor | None = None,  # (B, T)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = input_ids.shape[1]
        if t > self.cfg.max_length:
            raise ValueError(
                f"sequence length {t} exceeds text.max_length={self.cfg.max_length}; "
                "truncate in tokenization or raise max_length"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(t, device=input_ids.device)
        x = self.token_embed(input_ids) + self.pos_embed(positions) + self.type_embed(token_type_ids)
        x = self.drop(self.embed_norm(x))  # (B, T, D)
        mask = key_padding_mask(attention_mask)
        if unpadded(self.cfg.unpad, input_ids.device):
            packing = Packing(attention_mask)  # padded positions come out as zeros
            x = run_blocks(self.blocks, packing.pack(x), self.grad_checkpointing, mask=mask, packing=packing)
            x = packing.unpack(self.out_proj(self.norm(x)))  # (B, T, out_dim)
        else:
            x = self.out_proj(self.norm(run_blocks(self.blocks, x, self.grad_checkpointing, mask=mask)))
        if self.cfg.pool == "cls":
            return x[:, 0], x
        weights = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1), x
