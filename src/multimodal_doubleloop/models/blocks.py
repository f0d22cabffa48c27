"""Transformer building blocks shared by every tower: attention and MLP, pre- or post-norm.

One `Block` serves the vision encoder, the text encoder, the fusion layers and the
caption decoder; what differs is only whether it has a cross-attention sub-layer,
whether its self-attention is causal, and where its norms sit (pre-norm by default;
post-norm to run BERT's pretrained weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Packing:
    """The real (unpadded) tokens of a padded (B, T) batch, as rows of an (N, D) tensor.

    Every per-token layer (projections, MLP, norms) then skips the padding (a quarter
    of the work when lengths spread from half to full); only attention needs the padded layout
    and goes through `unpack`/`pack`. Building it reads how many tokens are real
    (`nonzero`), which is free on CPU and a host sync on an accelerator."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.length = attention_mask.shape
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])
        out = out.index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])

    def rows(self) -> torch.Tensor:
        """(N,) the batch row of each real token."""
        return torch.div(self.index, self.length, rounding_mode="floor")

    def firsts(self) -> torch.Tensor:
        """(B,) the packed row of each sequence's first token ([CLS]), which must be real."""
        firsts = (self.index % self.length == 0).nonzero().squeeze(1)
        if len(firsts) != self.batch:
            raise ValueError("a sequence's first token is padding: its [CLS] has no packed row")
        return firsts


def unpad_setting(value: str | bool, path: str) -> str:
    """A validated `unpad` setting: auto | on | off (YAML reads a bare on/off as a boolean)."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    if value not in ("auto", "on", "off"):
        raise ValueError(f"{path}={value!r}: use 'auto', 'on' or 'off'")
    return value


def unpadded(setting: str, device: torch.device) -> bool:
    """Whether to skip padding: always ("on"), never ("off"), or on CPU ("auto"), where
    counting the real tokens costs nothing (on an accelerator it is a host sync)."""
    return setting == "on" or (setting == "auto" and device.type == "cpu")


class Grouping:
    """Rows of an (N, D) tensor sorted into groups, as a padded (G, L, D) batch.

    Cross-attention of image-major batches: every text token attends to the patch
    tokens of its own image, and one image has several questions. Gathering an image's
    keys and values for each question (B copies of an (S, D) memory, and an
    accumulating scatter of their gradients in backward) is the costly way; grouping
    the queries instead puts all tokens of an image's questions into one row against
    that image's single K/V (G = images, L = most query tokens of one image). Rows at
    the padding are computed and dropped."""

    def __init__(self, groups: torch.Tensor, num_groups: int):
        n = groups.shape[0]
        counts = torch.bincount(groups, minlength=num_groups)
        order = torch.argsort(groups, stable=True)
        starts = counts.cumsum(0) - counts
        slot = torch.empty_like(groups)
        slot[order] = torch.arange(n, device=groups.device) - starts[groups[order]]
        self.num_groups, self.length = num_groups, max(int(counts.max()), 1) if n else 1
        self.flat = groups * self.length + slot  # (N,) position in the (G * L) rows

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (G, L, D), zeros at the padding."""
        out = x.new_zeros(self.num_groups * self.length, x.shape[-1]).index_copy(0, self.flat, x)
        return out.view(self.num_groups, self.length, x.shape[-1])

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """(G, L, D) -> (N, D)."""
        return y.reshape(self.num_groups * self.length, y.shape[-1]).index_select(0, self.flat)


class Attention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention`.

    Keys and values may come from `memory`; `memory_index` lets many queries share
    one memory row (image-major batching: the K/V of an image are projected once
    and gathered for each of its questions), and `grouping` does the same without
    the gather: the queries of one memory row become one sequence (`Grouping`).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.cross, self.dropout = heads, cross, dropout
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        mask: torch.Tensor | None = None,  # (B, 1|T, S) bool, True = attend
        memory: torch.Tensor | None = None,  # (M, S, D)
        memory_index: torch.Tensor | None = None,  # (B,) rows of memory per query row
        causal: bool = False,
        packing: Packing | None = None,  # x holds only the real tokens, (N, D)
        grouping: Grouping | None = None,  # cross: the memory row of each row of x.view(-1, D)
    ) -> torch.Tensor:
        if self.cross:
            q = self.q(x)
            k, v = self.kv(memory).chunk(2, dim=-1)  # (M, S, D) each
            if grouping is not None:  # every query row of x against its own memory row
                if mask is not None:
                    raise ValueError("cross-attention with a grouping takes no memory mask")
                out = self._attend(grouping.scatter(q.reshape(-1, q.shape[-1])), k, v, None, False)
                return self.proj(grouping.gather(out).view_as(q))
            if memory_index is not None:
                k, v = k.index_select(0, memory_index), v.index_select(0, memory_index)  # (B, S, D)
            return self.proj(self._attend(q, k, v, mask, causal))
        if packing is not None:  # attention itself runs on the padded layout
            return self.proj(packing.pack(self._self_attention(packing.unpack(self.qkv(x)), mask, causal)))
        return self.proj(self._self_attention(self.qkv(x), mask, causal))

    def forward_first(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, packing: Packing | None = None
    ) -> torch.Tensor:
        """Self-attention at each sequence's first position only -> (B, 1, D): the
        [CLS] query against the keys and values of every token."""
        qkv = self.qkv(x)
        if packing is not None:
            qkv = packing.unpack(qkv)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.proj(self._attend(q[:, :1], k, v, mask, False))

    def _self_attention(self, qkv: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        q, k, v = qkv.chunk(3, dim=-1)
        return self._attend(q, k, v, mask, causal)

    def _attend(self, q, k, v, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """(B, T|S, D) queries, keys, values -> (B, T, D), before the output projection."""
        q, k, v = self._split(q), self._split(k), self._split(v)
        attn_mask = mask.unsqueeze(1) if mask is not None else None  # (B, 1, 1|T, S)
        if causal and attn_mask is not None:
            t, s = q.shape[-2], k.shape[-2]
            attn_mask = attn_mask & torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )
        b, h, t, dh = out.shape
        return out.transpose(1, 2).reshape(b, t, h * dh)


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Self-attention, optional cross-attention, MLP; each a residual sub-layer.

    Pre-norm (default; ViT, GPT-2): `x + f(norm(x))`. Post-norm (`post_norm=True`; BERT):
    `norm(x + f(x))`, only so that a pretrained BERT computes what it was trained to.
    `eps` is the LayerNorm epsilon of all its norms (timm ViT 1e-6, BERT 1e-12)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross: bool = False,
        eps: float = 1e-5,
        post_norm: bool = False,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.cross = cross
        if cross:
            self.norm_cross = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = Attention(dim, heads, dropout, cross=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor, norm: nn.LayerNorm, sublayer) -> torch.Tensor:
        """`x + sublayer(norm(x))`, or `norm(x + sublayer(x))` when post-norm."""
        if self.post_norm:
            return norm(x + sublayer(x))
        return x + sublayer(norm(x))

    def _cross(self, x, memory, memory_mask, memory_index, grouping) -> torch.Tensor:
        """The cross-attention sub-layer (residual); `x` unchanged without memory."""
        if not self.cross or memory is None:
            return x
        return self._residual(
            x,
            self.norm_cross,
            lambda h: self.drop(
                self.cross_attn(h, mask=memory_mask, memory=memory, memory_index=memory_index, grouping=grouping)
            ),
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
        causal: bool = False,
        packing: Packing | None = None,
        grouping: Grouping | None = None,
    ) -> torch.Tensor:
        x = self._residual(
            x, self.norm1, lambda h: self.drop(self.attn(h, mask=mask, causal=causal, packing=packing))
        )
        x = self._cross(x, memory, memory_mask, memory_index, grouping)
        return self._residual(x, self.norm2, self.mlp)

    def forward_first(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
        packing: Packing | None = None,
        grouping: Grouping | None = None,
    ) -> torch.Tensor:
        """The block's output at each sequence's first token ([CLS]) only -> (B, 1, D),
        the same values `forward` gives there. A last layer whose reader takes only the
        pooled [CLS] skips the other tokens' queries, cross-attention and MLP: keys and
        values still come from every token. `grouping` groups the B first tokens by
        memory row (not the packed tokens)."""
        first = x[:, :1] if packing is None else x.index_select(0, packing.firsts()).unsqueeze(1)
        h = x if self.post_norm else self.norm1(x)
        y = first + self.drop(self.attn.forward_first(h, mask, packing))
        if self.post_norm:
            y = self.norm1(y)
        y = self._cross(y, memory, None, memory_index, grouping)
        return self._residual(y, self.norm2, self.mlp)


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    grad_checkpointing: bool,
    **kwargs,
) -> torch.Tensor:
    """Apply `blocks` in order, recomputing each in backward when checkpointing."""
    for block in blocks:
        x = run_block(block, x, grad_checkpointing, **kwargs)
    return x


def run_block(block, x: torch.Tensor, grad_checkpointing: bool, **kwargs) -> torch.Tensor:
    """`block(x, **kwargs)` (a block or one of its methods), recomputed in backward
    when checkpointing."""
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False, **kwargs)
    return block(x, **kwargs)


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, T) bool mask for `Attention`."""
    return attention_mask.bool().unsqueeze(1)
