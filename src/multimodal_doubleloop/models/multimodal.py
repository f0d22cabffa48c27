"""The multimodal model: vision and text towers, fusion, task heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import build
from .blocks import unpadded
from .fusion import Features, FusionConfig, build_fusion
from .heads import HeadConfig, build_head
from .text import TextConfig, TextEncoder
from .vision import VisionConfig, VisionTransformer, init_weights


@dataclass
class ModelConfig:
    vision: VisionConfig | None = field(default_factory=VisionConfig)  # None = text only
    text: TextConfig | None = field(default_factory=TextConfig)  # None = image only
    fusion: FusionConfig = field(default_factory=FusionConfig)
    heads: dict[str, HeadConfig] = field(default_factory=lambda: {"answer": HeadConfig()})
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.vision is None and self.text is None:
            raise ValueError("model needs a vision or a text tower (both are None)")
        towers = {"vision": self.vision, "text": self.text}
        dims = {name: cfg.out_dim for name, cfg in towers.items() if cfg is not None}
        wrong = {name: dim for name, dim in dims.items() if dim != self.fusion.dim}
        if wrong:
            raise ValueError(
                f"model dims must match across towers and fusion: tower output widths {dims}, "
                f"fusion.dim={self.fusion.dim}; set "
                + ", ".join(f"model.{name}.output_dim={self.fusion.dim}" for name in wrong)
                + " (a Linear from the tower's dim) or change the dims to match"
            )
        if not self.heads:
            raise ValueError("model.heads is empty: configure at least one task head")

    @classmethod
    def from_dict(cls, params: dict) -> ModelConfig:
        """Build from a parameters dict; unknown keys and wrong types fail with their path."""
        vision, text = params.get("vision", {}), params.get("text", {})
        nested = {
            "vision": None if vision is None else build(VisionConfig, vision, "model.vision"),
            "text": None if text is None else build(TextConfig, text, "model.text"),
            "fusion": build(FusionConfig, params.get("fusion", {}), "model.fusion"),
        }
        if "heads" in params:
            if not isinstance(params["heads"], dict):
                raise ValueError("model.heads must be a mapping of task name -> head config")
            nested["heads"] = {
                name: build(HeadConfig, h, f"model.heads.{name}") for name, h in params["heads"].items()
            }
        return build(cls, params, "model", nested)


class MultimodalModel(nn.Module):
    """Composes prebuilt parts: `MultimodalModel(vision, text, fusion, heads)`."""

    def __init__(
        self,
        vision: VisionTransformer | None,
        text: TextEncoder | None,
        fusion: nn.Module,
        heads: nn.ModuleDict,
    ):
        super().__init__()
        self.vision, self.text, self.fusion, self.heads = vision, text, fusion, heads

    def features(
        self,
        images: torch.Tensor | None = None,  # (M, C, H, W) unique images
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,  # (B,) image row of each text
        fused_tokens: bool = True,  # False: no reader of the fused tokens (`reads_fused_tokens`)
    ) -> Features:
        image = text = None
        if images is not None:
            if self.vision is None:
                raise ValueError("images given but the model has no vision tower")
            image = self.vision(images)
        if input_ids is not None:
            if self.text is None:
                raise ValueError("input_ids given but the model has no text tower")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text = (*self._encode_texts(input_ids, attention_mask, token_type_ids), attention_mask)
        return self.fusion(image, text, image_index, fused_tokens)

    def reads_fused_tokens(self, tasks: list[str] | None = None) -> bool:
        """Whether any of `tasks`' heads (default: all) reads the fused token sequence;
        when none does, `features(fused_tokens=False)` skips computing it."""
        names = self.heads if tasks is None else tasks
        return any(self.heads[name].reads_fused_tokens for name in names)

    def _encode_texts(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower's (pooled, tokens) for each row, running it once per distinct
        text: image-major batches repeat questions (easy-VQA: ~80 distinct of ~160 per
        16 images). Exact where the tower is deterministic, so on CPU (where finding
        the duplicates is no host sync) and without active dropout."""
        text_cfg = self.text.cfg
        if not unpadded(text_cfg.unpad, input_ids.device) or (self.training and text_cfg.dropout > 0):
            return self.text(input_ids, attention_mask, token_type_ids)
        parts = [input_ids, attention_mask] + ([] if token_type_ids is None else [token_type_ids])
        distinct, inverse = torch.unique(torch.cat(parts, 1), dim=0, return_inverse=True)
        if len(distinct) == len(input_ids):  # no repeats: keep the rows as they are
            return self.text(input_ids, attention_mask, token_type_ids)
        t = input_ids.shape[1]
        types = None if token_type_ids is None else distinct[:, 2 * t:]
        pooled, tokens = self.text(distinct[:, :t], distinct[:, t:2 * t], types)
        return pooled.index_select(0, inverse), tokens.index_select(0, inverse)

    def forward(
        self, tasks: list[str] | None = None, caption_ids: torch.Tensor | None = None, **batch
    ) -> dict[str, torch.Tensor]:
        """Run the towers once and every requested head (by default all that the inputs
        allow: caption heads need `caption_ids` for teacher forcing and are left out
        without them; name one in `tasks` to get the head's own error, or call its
        `.greedy()` / `.beam()` to generate)."""
        captions = [n for n, h in self.heads.items() if h.cfg.type == "caption"]
        if tasks is None:
            tasks = [n for n in self.heads if caption_ids is not None or n not in captions]
        unknown = [n for n in tasks if n not in self.heads]
        if unknown:
            raise ValueError(f"unknown task head(s) {unknown}; this model has {list(self.heads)}")
        feats = self.features(**batch, fused_tokens=self.reads_fused_tokens(tasks))
        return {
            name: self.heads[name](feats, caption_ids) if name in captions else self.heads[name](feats)
            for name in tasks
        }

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations per block in backward: towers, fusion and decoders."""
        for part in (self.vision, self.text, self.fusion, *self.heads.values()):
            if part is not None and hasattr(part, "grad_checkpointing"):
                part.grad_checkpointing = enabled

    def components(self) -> dict[str, nn.Module]:
        """The parts by name (vision, text, fusion, heads), those the model has."""
        parts = {"vision": self.vision, "text": self.text, "fusion": self.fusion, "heads": self.heads}
        return {name: part for name, part in parts.items() if part is not None}

    def parameter_groups(self, trainable_only: bool = True) -> dict[str, list[nn.Parameter]]:
        """Named groups (vision, text, fusion, heads) for per-group optimiser settings;
        with `trainable_only=False` also the frozen ones (a run that unfreezes them later
        gives the optimiser every parameter from the start)."""
        groups = {
            name: [p for p in part.parameters() if p.requires_grad or not trainable_only]
            for name, part in self.components().items()
        }
        return {name: params for name, params in groups.items() if params}

    def freeze(self, *components: str, frozen: bool = True) -> None:
        """Freeze (or unfreeze with frozen=False) components by name. A frozen component
        also keeps its batch-norm statistics: its norms run in inference mode."""
        for name in components:
            part = getattr(self, name, None)
            if not isinstance(part, nn.Module):
                raise ValueError(
                    f"unknown component {name!r}; use vision, text, fusion or heads"
                )
            part.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        for part in self.components().values():
            if not any(p.requires_grad for p in part.parameters()):
                for m in part.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def build_model(cfg: ModelConfig) -> MultimodalModel:
    vision = VisionTransformer(cfg.vision) if cfg.vision is not None else None
    text = TextEncoder(cfg.text) if cfg.text is not None else None
    heads = nn.ModuleDict({name: build_head(cfg.fusion.dim, h) for name, h in cfg.heads.items()})
    model = MultimodalModel(vision, text, build_fusion(cfg.fusion), heads)
    model.apply(init_weights)
    model.set_grad_checkpointing(cfg.gradient_checkpointing)
    return model
