"""ViT vision encoder with an optional convolutional stem."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block, run_blocks


@dataclass
class VisionConfig:
    image_size: int = 64
    patch_size: int = 16  # in input pixels; the stem's total stride must divide it
    in_channels: int = 3
    dim: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Channels of stride-2 3x3 convs before patchify (Xiao et al. 2021: a conv stem
    # makes small ViTs train faster and more stably). Empty = plain patch embedding.
    stem_channels: list[int] = field(default_factory=lambda: [32, 64])
    position_embedding: str = "learned"  # "learned" | "sincos" (fixed 2-D)
    # Pooled feature: the CLS token, or the mean of the patch tokens (carries the
    # image's content from the first step, which speeds up learning from scratch).
    pool: str = "cls"
    norm_eps: float = 1e-5  # LayerNorm epsilon; timm's pretrained ViTs use 1e-6
    # Per-channel normalisation `(x - mean) / std` of the [0, 1] images, done by the tower
    # so a pretrained one sees what it was trained on (ImageNet ViTs: mean = std = 0.5
    # or the ImageNet statistics). Empty = images used as given.
    pixel_mean: list[float] = field(default_factory=list)
    pixel_std: list[float] = field(default_factory=list)
    # Width of the features handed on: 0 = dim; otherwise a Linear(dim, output_dim) on
    # pooled and tokens, so a pretrained tower of another width can feed fusion.
    output_dim: int = 0

    def __post_init__(self):
        stride = 2 ** len(self.stem_channels)
        if self.patch_size % stride:
            raise ValueError(
                f"vision.patch_size={self.patch_size} must be a multiple of the conv stem "
                f"stride {stride} (2 ** len(stem_channels={self.stem_channels}))"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision.image_size={self.image_size} must be a multiple of "
                f"vision.patch_size={self.patch_size}"
            )
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"vision.pool={self.pool!r}: use 'cls' or 'mean'")
        if self.position_embedding not in ("learned", "sincos"):
            raise ValueError(
                f"vision.position_embedding={self.position_embedding!r}: use 'learned' or 'sincos'"
            )
        self._check_pretrained_fields()

    def _check_pretrained_fields(self):
        if self.norm_eps <= 0:
            raise ValueError(f"vision.norm_eps={self.norm_eps} must be > 0 (timm ViTs: 1e-6)")
        if self.output_dim < 0:
            raise ValueError(f"vision.output_dim={self.output_dim}: use 0 (= dim) or a width > 0")
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            if values and len(values) != self.in_channels:
                raise ValueError(
                    f"vision.{name}={values} has {len(values)} values; give one per channel "
                    f"(in_channels={self.in_channels}) or leave it empty"
                )
        if bool(self.pixel_mean) != bool(self.pixel_std):
            raise ValueError("vision.pixel_mean and vision.pixel_std: set both or neither")
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError(f"vision.pixel_std={self.pixel_std}: every value must be > 0")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def out_dim(self) -> int:
        """Width of the pooled and token features the tower returns."""
        return self.output_dim or self.dim


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid*grid, dim)."""
    if dim % 4:
        raise ValueError(f"sincos position embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4 - 1 or 1))
    out = []
    for pos in (ys.flatten(), xs.flatten()):
        angles = pos[:, None].float() * omega[None]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1)


class VisionTransformer(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> pooled CLS (B, D) and patch tokens (B, N, D),
    D = `cfg.out_dim`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.pixel_mean:  # not in the state dict: part of the config, not learnt
            mean, std = torch.tensor(cfg.pixel_mean), torch.tensor(cfg.pixel_std)
            self.register_buffer("pixel_mean", mean.view(1, -1, 1, 1), persistent=False)
            self.register_buffer("pixel_std", std.view(1, -1, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        channels = cfg.in_channels
        for out in cfg.stem_channels:
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.GELU(),
            ]
            channels = out
        self.stem = nn.Sequential(*layers)
        kernel = cfg.patch_size // 2 ** len(cfg.stem_channels)
        self.patch_embed = nn.Conv2d(channels, cfg.dim, kernel, stride=kernel)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        num_patches = cfg.grid**2
        if cfg.position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, cfg.dim) * 0.02)
        else:
            fixed = torch.cat([torch.zeros(1, cfg.dim), sincos_2d(cfg.grid, cfg.dim)])
            self.register_buffer("pos_embed", fixed.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, eps=cfg.norm_eps)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # Identity has no parameters: towers without output_dim keep their state dict.
        self.out_proj = nn.Linear(cfg.dim, cfg.output_dim) if cfg.output_dim else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size:
            raise ValueError(
                f"expected {self.cfg.image_size}x{self.cfg.image_size} images, got "
                f"{tuple(images.shape[-2:])}; resize in the data transforms"
            )
        if self.cfg.pixel_mean:
            images = (images - self.pixel_mean) / self.pixel_std
        x = patch_embed(self.patch_embed, self.stem(images))  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        x = run_blocks(self.blocks, x + self.pos_embed, self.grad_checkpointing)
        x = self.out_proj(self.norm(x))  # (B, 1+N, out_dim)
        pooled = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(1)  # (B, D)
        return pooled, x[:, 1:]


def patch_embed(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv` (kernel = stride, no padding) applied to (B, C, H, W), as (B, N, D) tokens.

    Computed as one matmul on the flattened patches rather than by the convolution
    kernel: the same numbers, and cheaper on CPU (seed size, one thread, forward and
    backward: 8.4 ms against the convolution's 9.4 ms)."""
    k = conv.kernel_size[0]
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, k, k)
    patches = patches.reshape(b, (h // k) * (w // k), c * k * k)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear/embedding init as in ViT/BERT."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


