"""Losses. Each returns a dict of named terms; the total is the sum of the values.

The meta loss of the double-loop controller lives with the controller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ContrastiveOutput, HeadConfig


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> dict[str, torch.Tensor]:
    """Cross-entropy over (B, C) logits; labels < 0 are ignored."""
    return {"ce": F.cross_entropy(logits, labels, label_smoothing=label_smoothing, ignore_index=-1)}


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0
) -> dict[str, torch.Tensor]:
    """Multi-class focal loss (Lin et al. 2017): -(1 - p_t)^gamma log p_t, mean over
    labelled rows; labels < 0 are ignored. gamma=0 is cross-entropy."""
    valid = labels >= 0
    logp = logits.float().log_softmax(-1)[valid]  # (n, C)
    logp_t = logp.gather(1, labels[valid, None]).squeeze(1)  # (n,)
    loss = -((1 - logp_t.exp()).clamp(min=0) ** gamma * logp_t)
    # No labelled row: zero that still depends on the logits, so backward works.
    return {"focal": loss.mean() if loss.numel() else logits.sum() * 0.0}


def multilabel_loss(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Binary cross-entropy per label over (B, L) logits and 0/1 (or soft) targets."""
    return {
        "bce": F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=pos_weight
        )
    }


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "mse"
) -> dict[str, torch.Tensor]:
    """Mean squared (kind="mse") or absolute (kind="l1") error; the term is named by kind."""
    if kind == "mse":
        return {"mse": F.mse_loss(pred, target.to(pred.dtype))}
    if kind == "l1":
        return {"l1": F.l1_loss(pred, target.to(pred.dtype))}
    raise ValueError(f"regression loss kind={kind!r}: use 'mse' or 'l1'")


def contrastive_loss(
    image_embeds: torch.Tensor,  # (M, E) unit norm
    text_embeds: torch.Tensor,  # (B, E) unit norm
    logit_scale: torch.Tensor,  # ()
    image_index: torch.Tensor | None = None,  # (B,) image of each text; None = row i
) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE (CLIP); the two directions are halved so they sum to the mean.

    With image-major batches an image may have several texts: text->image is plain
    cross-entropy to its image; image->text spreads the target evenly over the
    image's texts. Images without a text in the batch are left out of that direction.
    """
    b, m = text_embeds.shape[0], image_embeds.shape[0]
    if image_index is None:
        if b != m:
            raise ValueError(f"{b} texts and {m} images need image_index to pair them")
        image_index = torch.arange(b, device=text_embeds.device)
    logits = logit_scale * text_embeds @ image_embeds.t()  # (B, M)
    text_to_image = F.cross_entropy(logits, image_index)
    positives = F.one_hot(image_index, m).t().to(logits.dtype)  # (M, B)
    has_text = positives.sum(1) > 0
    target = positives[has_text] / positives[has_text].sum(1, keepdim=True)
    image_to_text = F.cross_entropy(logits.t()[has_text], target)
    return {"contrastive_t2i": 0.5 * text_to_image, "contrastive_i2t": 0.5 * image_to_text}


def caption_loss(
    logits: torch.Tensor,  # (B, L, V) from the teacher-forced caption head
    caption_ids: torch.Tensor,  # (B, L) the same ids the head read, [BOS] first
    pad_id: int = 0,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy: logits at t score caption_ids[:, t + 1]; [PAD] ignored."""
    target = caption_ids[:, 1:].masked_fill(caption_ids[:, 1:] == pad_id, -100)
    return {
        "caption_ce": F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            target.flatten(),
            ignore_index=-100,
            label_smoothing=label_smoothing,
        )
    }


def head_loss(
    cfg: HeadConfig, output, target: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> dict[str, torch.Tensor]:
    """The loss a head's config selects, on that head's output (contrastive needs no target).

    `label_smoothing` is the run's default for cross-entropy heads whose config leaves
    `label_smoothing` unset (None); a head that sets it, to 0 included, keeps its own."""
    kind = cfg.loss_kind
    smoothing = label_smoothing if cfg.label_smoothing is None else cfg.label_smoothing
    if kind == "infonce":
        if not isinstance(output, ContrastiveOutput):
            raise ValueError("loss 'infonce' needs the contrastive head's ContrastiveOutput")
        return contrastive_loss(
            output.image_embeds, output.text_embeds, output.logit_scale, output.image_index
        )
    if target is None:
        raise ValueError(f"{cfg.type} head loss {kind!r} needs a target")
    if kind == "ce":
        return classification_loss(output.float(), target, smoothing)
    if kind == "focal":
        return focal_loss(output, target, cfg.focal_gamma)
    if kind == "bce":
        return multilabel_loss(output.float(), target)
    if kind in ("mse", "l1"):
        return regression_loss(output.float(), target, kind)
    if kind == "token_ce":
        return caption_loss(output, target, cfg.pad_id, smoothing)
    raise ValueError(f"unknown head loss {kind!r}")


class UncertaintyWeighting(nn.Module):
    """Multi-task weighting by learned homoscedastic uncertainty (Kendall et al. 2018).

    Each task i has s_i = log sigma_i^2; its weighted loss is exp(-s_i) L_i + s_i,
    the common simplified form of the paper's objective (the optimum is s_i = log L_i,
    so noisier tasks get smaller weights). The parameters must join the optimiser.
    """

    def __init__(self, tasks: Sequence[str], init_log_var: float = 0.0):
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks={list(tasks)} must be non-empty and unique")
        self.tasks = list(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init_log_var)))

    def forward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task scalar losses (any subset of tasks) -> named terms
        `<task>` (exp(-s) L) and `<task>_log_var` (s)."""
        unknown = sorted(set(losses) - set(self.tasks))
        if unknown:
            raise ValueError(f"losses for unknown task(s) {unknown}; weighting has {self.tasks}")
        terms = {}
        for i, task in enumerate(self.tasks):
            if task in losses:
                s = self.log_vars[i]
                terms[task] = torch.exp(-s) * losses[task]
                terms[f"{task}_log_var"] = s
        return terms

    def weights(self) -> dict[str, float]:
        """Current exp(-s) per task, for logging."""
        return {
            t: float(w) for t, w in zip(self.tasks, torch.exp(-self.log_vars.detach()), strict=True)
        }


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(terms.values())
