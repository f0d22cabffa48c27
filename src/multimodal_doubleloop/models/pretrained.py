"""Pretrained weights into our towers: timm ViT and Hugging Face BERT checkpoints.

Only torch and safetensors are needed: the checkpoints' layouts are mapped here by
name, so neither timm nor transformers is a run-time dependency (the tests build
the checkpoints with the real libraries and check that our towers compute the same
numbers). Nothing is downloaded: the caller hands in a state dict it read.

    sd = read_state_dict("vit_base_patch16_224.safetensors")
    vision = VisionTransformer(VisionConfig(**timm_vit_config(sd, image_size=224)))
    report = load_timm_vit(vision, sd)   # LoadReport: loaded / missing / unexpected / resized
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from .text import TextEncoder
from .vision import VisionTransformer

log = logging.getLogger(__name__)

Mapped = dict[str, tuple[tuple[str, ...], torch.Tensor]]  # ours -> (checkpoint keys, tensor)


@dataclass
class LoadReport:
    """What a load did, by key: read it (or log `summary()`) rather than trust silence."""

    loaded: list[str] = field(default_factory=list)  # our tensors set from the checkpoint
    missing: list[str] = field(default_factory=list)  # ours left at init (incl. out_proj.*)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys not used
    resized: list[str] = field(default_factory=list)  # ours loaded after resampling/cropping

    def summary(self) -> str:
        """One line: the counts, and the missing, unexpected and resized keys by name."""
        return (
            f"loaded {len(self.loaded)} tensors; resized {len(self.resized)} {self.resized}; "
            f"missing {len(self.missing)} {self.missing}; "
            f"unexpected {len(self.unexpected)} {self.unexpected}"
        )


def read_state_dict(source: str | os.PathLike | bytes | BinaryIO) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors on CPU, from a path, bytes or a binary file object.

    `.safetensors` or `.pt/.pth/.bin` (`torch.load(weights_only=True)`: no pickled code
    runs); bytes and file objects (what an fsspec dataset read) are told apart by their
    first bytes. A dict wrapped as `{"state_dict": ...}` or `{"model": ...}` is unwrapped."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".safetensors":
            return _tensors_only(safetensors.torch.load_file(path), str(path))
        if path.suffix in (".pt", ".pth", ".bin"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            return _tensors_only(loaded, str(path))
        raise ValueError(f"{path}: unknown checkpoint suffix; use .safetensors, .pt, .pth or .bin")
    data = source if isinstance(source, (bytes, bytearray)) else source.read()
    if data[:2] == b"PK" or data[:1] == b"\x80":  # torch.save zip archive / legacy pickle
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return _tensors_only(loaded, "checkpoint bytes")
    if data[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        return _tensors_only(safetensors.torch.load(bytes(data)), "checkpoint bytes")
    raise ValueError("checkpoint bytes are neither safetensors nor torch.save output")


def _tensors_only(loaded, where: str) -> dict[str, torch.Tensor]:
    """Unwrap `{"state_dict": sd}` / `{"model": sd}` and insist on a flat dict of tensors."""
    if not isinstance(loaded, dict):
        raise ValueError(f"{where}: expected a dict of tensors, got {type(loaded).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    others = sorted(k for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if others:
        raise ValueError(f"{where}: not a state dict; these entries are not tensors: {others[:10]}")
    return loaded


# ---------------------------------------------------------------- timm ViT


_VIT_NEEDS = (  # (key, what its absence means)
    ("cls_token", "no class token (class_token=False / global-pool-only ViTs)"),
    ("pos_embed", "no absolute position embedding (e.g. RoPE ViTs)"),
    ("patch_embed.proj.weight", "no conv patch embedding (hybrid CNN-ViTs)"),
    ("blocks.0.attn.qkv.bias", "no qkv bias (qkv_bias=False)"),
    ("norm.weight", "no final norm (fc_norm after global pooling, e.g. global_pool='avg')"),
)
_VIT_REFUSES = (  # (key, the variant it marks)
    ("reg_token", "register tokens (vit_*_reg*)"),
    ("norm_pre.weight", "a norm before the blocks (pre_norm=True, CLIP ViTs)"),
    ("blocks.0.ls1.gamma", "layer scale (init_values, vit_*_ls / DeiT-III)"),
    ("blocks.0.gamma_1", "layer scale (DeiT-III)"),
    ("blocks.0.attn.q_norm.weight", "q/k norm (qk_norm=True)"),
    ("blocks.0.mlp.fc1_g.weight", "a gated MLP (SwiGLU)"),
)


def _check_vit_layout(state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse timm ViT variants whose computation our tower does not reproduce."""
    layout = "a plain timm vit_*_patch16_224 layout"
    for key, meaning in _VIT_NEEDS:
        if key not in state_dict:
            raise ValueError(f"not {layout}: {meaning}; key {key!r} is absent. Unsupported variant")
    for key, variant in _VIT_REFUSES:
        if key in state_dict:
            raise ValueError(f"unsupported ViT variant: {variant} (key {key!r}); need {layout}")
    tokens = state_dict["pos_embed"].shape[1]
    if _square_side(tokens) is not None:
        raise ValueError(
            f"unsupported ViT variant: pos_embed has {tokens} = a square grid of positions and "
            "none for the class token (no_embed_class=True, e.g. DeiT-III)"
        )
    if _square_side(tokens - 1) is None:
        raise ValueError(f"pos_embed has {tokens} positions: not a class token plus a square grid")


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def _mlp_ratio(dim: int, hidden: int, what: str) -> float:
    """hidden / dim, checked to give back `hidden` through MLP's int(dim * mlp_ratio)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"{what}: MLP width {hidden} is not int({dim} * mlp_ratio) for any float")
    return ratio


# Head count by width of timm's ViT families (Ti, S, B, L, H, g, G): not in a state dict.
TIMM_VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def timm_vit_config(
    state_dict: dict[str, torch.Tensor], image_size: int | None = None, heads: int | None = None
) -> dict:
    """`VisionConfig` kwargs that fit a timm ViT checkpoint (vit_*_patch16_224 layout).

    Read from the tensors' shapes: dim, depth, patch_size, in_channels, mlp_ratio.
    `heads` is not in a state dict: by default timm's for that width (`TIMM_VIT_HEADS`;
    ViT-H/14 is 1280 wide with 16 heads, not 1280 / 64); pass it for other widths. `image_size` defaults to the checkpoint's grid x
    patch; another size is fine (the loader resamples pos_embed as timm does)."""
    _check_vit_layout(state_dict)
    dim = state_dict["cls_token"].shape[-1]
    weight = state_dict["patch_embed.proj.weight"]  # (D, C, P, P)
    depth = len({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    if heads is None:
        if dim not in TIMM_VIT_HEADS:
            raise ValueError(
                f"a {dim}-wide ViT is none of timm's ViT-Ti/S/B/L/H/g/G widths {sorted(TIMM_VIT_HEADS)}: "
                "its head count is not in a state dict, pass heads="
            )
        heads = TIMM_VIT_HEADS[dim]
    hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    grid = _square_side(state_dict["pos_embed"].shape[1] - 1)
    return {
        "image_size": image_size or grid * weight.shape[-1],
        "patch_size": weight.shape[-1],
        "in_channels": weight.shape[1],
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "mlp_ratio": _mlp_ratio(dim, hidden, "timm ViT"),
        "stem_channels": [],
        "pool": "cls",
        "position_embedding": "learned",
        "norm_eps": 1e-6,
    }


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): the class position kept, the grid
    resized bicubically with antialiasing, exactly as timm's `resample_abs_pos_embed`."""
    prefix, table = pos_embed[:, :1], pos_embed[:, 1:]
    old, dim = _square_side(table.shape[1]), table.shape[-1]
    table = table.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    table = F.interpolate(
        table, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False
    )
    table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    log.info("resampled pos_embed from a %dx%d to a %dx%d grid", old, old, grid, grid)
    return torch.cat([prefix, table], dim=1)


def load_timm_vit(tower: VisionTransformer, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load a timm ViT checkpoint into `tower` (build it from `timm_vit_config`).

    Our names are timm's but for `patch_embed.proj.*` (ours: `patch_embed.*`);
    `head.*` and `fc_norm.*` (classifier parts) come back as unexpected. pos_embed is
    resampled when the tower's grid differs; other shape mismatches raise."""
    mapped: Mapped = {}
    unexpected = []
    for key, value in state_dict.items():
        if key.startswith("patch_embed.proj."):
            mapped[key.replace("patch_embed.proj.", "patch_embed.", 1)] = ((key,), value)
        elif key in ("cls_token", "pos_embed") or key.startswith(("blocks.", "norm.")):
            mapped[key] = ((key,), value)
        else:
            unexpected.append(key)
    own = tower.state_dict()
    resized = []
    if "pos_embed" in mapped and "pos_embed" in own:
        keys, value = mapped["pos_embed"]
        if value.shape[1] != own["pos_embed"].shape[1]:
            mapped["pos_embed"] = (keys, resample_pos_embed(value, tower.cfg.grid))
            resized.append("pos_embed")
    return _load(tower, mapped, unexpected, resized)


# ---------------------------------------------------------------- Hugging Face BERT


def bert_text_config(hf_config: dict) -> dict:
    """`TextConfig` kwargs from a BERT `config.json` dict (post-norm, BERT's eps).

    Not set here: `max_length` (the caller's; at most max_position_embeddings, which
    `load_hf_bert` checks) and `dropout` (a training choice; BERT trained with 0.1)."""
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"model_type={model_type!r}: only BERT config.json files are read here")
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"hidden_act={act!r}: our MLP uses exact GELU, so only 'gelu' is supported"
        )
    positions = hf_config.get("position_embedding_type", "absolute")
    if positions != "absolute":
        raise ValueError(
            f"position_embedding_type={positions!r}: only 'absolute' (learned) positions are supported"
        )
    dim, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    pad_id = hf_config.get("pad_token_id")
    return {
        "vocab_size": hf_config["vocab_size"],
        "dim": dim,
        "depth": hf_config["num_hidden_layers"],
        "heads": heads,
        "mlp_ratio": _mlp_ratio(dim, hf_config["intermediate_size"], "BERT"),
        "type_vocab_size": hf_config.get("type_vocab_size", 2),
        "norm": "post",
        "norm_eps": hf_config.get("layer_norm_eps", 1e-12),
        "pool": "cls",
        "pad_id": 0 if pad_id is None else pad_id,  # BERT's [PAD] is 0
    }


_BERT_EMBEDDINGS = {
    "token_embed.weight": "embeddings.word_embeddings.weight",
    "type_embed.weight": "embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
}
_BERT_LAYER = {  # ours in blocks.i -> theirs in encoder.layer.i
    "attn.proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
_BERT_IGNORED = ("embeddings.position_ids",)  # a buffer of arange(max_positions)


def _bert_names(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Canonical BERT key -> the checkpoint's key: without the `bert.` prefix of
    BertForMaskedLM/BertForPreTraining saves, LayerNorm `gamma`/`beta` (the original
    bert-base-uncased .bin) read as `weight`/`bias`."""
    names = {}
    for key in state_dict:
        name = key.removeprefix("bert.")
        if "LayerNorm." in name:
            name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
        names[name] = key
    return names


def load_hf_bert(tower: TextEncoder, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load a Hugging Face BERT checkpoint (BertModel, or `bert.`-prefixed task models)
    into `tower` (build it from `bert_text_config` plus max_length).

    Separate query/key/value become our fused qkv (q;k;v rows); the first
    `max_length` position rows are kept. `pooler.*` and `cls.*` (task heads) come back
    as unexpected."""
    names = _bert_names(state_dict)
    mapped: Mapped = {}
    for ours, theirs in _BERT_EMBEDDINGS.items():
        if theirs in names:
            mapped[ours] = ((names[theirs],), state_dict[names[theirs]])
    layers = {int(m.group(1)) for n in names if (m := re.match(r"encoder\.layer\.(\d+)\.", n))}
    for i in sorted(layers):
        mapped.update(_bert_layer(i, names, state_dict))
    resized = _bert_positions(tower, names, state_dict, mapped)
    used = {key for keys, _ in mapped.values() for key in keys}
    unexpected = [k for n, k in names.items() if k not in used and n not in _BERT_IGNORED]
    return _load(tower, mapped, unexpected, resized)


def _bert_layer(i: int, names: dict[str, str], state_dict: dict[str, torch.Tensor]) -> Mapped:
    """Our `blocks.i.*` from BERT's `encoder.layer.i.*` (what the checkpoint has of it)."""
    theirs, mapped = f"encoder.layer.{i}.", {}
    for ours, part in _BERT_LAYER.items():
        for kind in ("weight", "bias"):
            if (name := f"{theirs}{part}.{kind}") in names:
                mapped[f"blocks.{i}.{ours}.{kind}"] = ((names[name],), state_dict[names[name]])
    for kind in ("weight", "bias"):
        qkv = [f"{theirs}attention.self.{p}.{kind}" for p in ("query", "key", "value")]
        if all(n in names for n in qkv):  # else they stay unexpected and qkv missing
            keys = tuple(names[n] for n in qkv)
            fused = torch.cat([state_dict[k] for k in keys], dim=0)  # (3D, D) / (3D,)
            mapped[f"blocks.{i}.attn.qkv.{kind}"] = (keys, fused)
    return mapped


def _bert_positions(
    tower: TextEncoder, names: dict[str, str], state_dict: dict[str, torch.Tensor], mapped: Mapped
) -> list[str]:
    """Our pos_embed: the checkpoint's first `max_length` rows; returns it as resized if cut."""
    name = "embeddings.position_embeddings.weight"
    if name not in names:
        return []
    key = names[name]
    table, length = state_dict[key], tower.cfg.max_length  # (P, D)
    if length > table.shape[0]:
        raise ValueError(
            f"text.max_length={length} exceeds the checkpoint's {table.shape[0]} position "
            f"embeddings (max_position_embeddings); set text.max_length <= {table.shape[0]}"
        )
    mapped["pos_embed.weight"] = ((key,), table[:length])
    return ["pos_embed.weight"] if length < table.shape[0] else []


# ---------------------------------------------------------------- shared


def _load(
    tower: nn.Module, mapped: Mapped, unexpected: list[str], resized: list[str]
) -> LoadReport:
    """Copy the mapped tensors that `tower` has; shape mismatches raise, naming both."""
    own = tower.state_dict()
    for ours, (theirs, value) in mapped.items():
        if ours in own and own[ours].shape != value.shape:
            raise ValueError(
                f"checkpoint {' + '.join(theirs)!r} has shape {tuple(value.shape)} but the tower's {ours!r} "
                f"has {tuple(own[ours].shape)}: build the tower's config from the checkpoint "
                "(timm_vit_config / bert_text_config)"
            )
    usable = {ours: value for ours, (_, value) in mapped.items() if ours in own}
    tower.load_state_dict(usable, strict=False)
    extra = [key for ours, (theirs, _) in mapped.items() if ours not in own for key in theirs]
    return LoadReport(
        loaded=sorted(usable),
        missing=sorted(set(own) - set(usable)),
        unexpected=sorted(unexpected + extra),
        resized=resized,
    )
