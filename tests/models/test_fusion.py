"""Fusion (early, late, hybrid) through the full model: modalities, gather, padding."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.models import FusionConfig
from multimodal_doubleloop.models.fusion import EarlyFusion

from .tiny import DIM, build, tiny_batch, tiny_config, tiny_model

KINDS = ["early", "late", "hybrid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("present", ["both", "image", "text"])
def test_forward_backward_with_modalities(kind, present):
    model = tiny_model(kind)
    batch = tiny_batch()
    if present == "image":
        batch = {"images": batch["images"]}
    elif present == "text":
        batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    rows = 3 if present == "image" else 5
    feats = model.features(**batch)
    assert feats.pooled.shape == (rows, DIM)
    assert feats.tokens.shape[0] == rows and feats.tokens.shape[-1] == DIM
    assert feats.token_mask.shape == feats.tokens.shape[:2]
    assert (feats.image_pooled is None) == (present == "text")
    assert (feats.text_pooled is None) == (present == "image")
    logits = model(**batch)["answer"]
    assert logits.shape == (rows, 5) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.heads.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_image_major_gather_equals_repeated_images(kind):
    """Images encoded once and gathered by image_index give the same outputs and
    gradients as each question carrying its own copy of its image."""
    batch = tiny_batch(images=3, texts=7)
    repeated = dict(batch, images=batch["images"][batch["image_index"]])
    del repeated["image_index"]
    outs, grads = [], []
    for b in (batch, repeated):
        model = tiny_model(kind)
        model.eval()  # BatchNorm in the stem would otherwise see different batches
        feats = model.features(**b)
        logits = model.heads["answer"](feats)
        (logits.square().mean() + feats.tokens.mean()).backward()
        outs.append((feats.pooled.detach(), feats.tokens.detach(), logits.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(a, b)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_text_padding_invariance_through_fusion(kind):
    model = tiny_model(kind).eval()
    batch = tiny_batch()
    feats = model.features(**batch)
    pad = 4
    padded = dict(batch)
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(5, pad, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(5, pad).long()], 1)
    padded_feats = model.features(**padded)
    torch.testing.assert_close(padded_feats.pooled, feats.pooled)
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(padded_feats.tokens[row, :length], feats.tokens[row, :length])


def test_fusion_needs_a_modality():
    with pytest.raises(ValueError, match="at least one modality"):
        EarlyFusion(FusionConfig(dim=DIM, heads=2))(None, None, None)


def test_fusion_config_rejects_unknown_kind():
    with pytest.raises(ValueError, match="fusion.kind"):
        FusionConfig(kind="middle")


@pytest.mark.parametrize("kind", ["early", "hybrid"])
def test_unpadded_fusion_matches_padded_fusion(kind):
    """fusion.unpad (real tokens only, queries grouped by image) changes no real output
    or gradient of an image-major batch; the padded positions come out as zeros."""
    batch = tiny_batch(images=3, texts=7)
    results = {}
    for unpad in ("on", "off"):
        config = tiny_config(kind)
        config["fusion"]["unpad"] = unpad
        model = build(config)
        model.eval()
        feats = model.features(**batch)
        real = feats.token_mask
        logits = model.heads["answer"](feats)
        (logits.square().mean() + feats.tokens[real].mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[unpad] = (feats.pooled.detach(), feats.tokens.detach(), logits.detach(), grads)
    on, off = results["on"], results["off"]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(on[0], off[0])
    torch.testing.assert_close(on[1][real], off[1][real])
    assert (on[1][~real] == 0).all()
    torch.testing.assert_close(on[2], off[2])
    assert on[3].keys() == off[3].keys()
    for name in on[3]:
        torch.testing.assert_close(on[3][name], off[3][name], msg=name)


def test_fusion_unpad_setting_is_checked():
    with pytest.raises(ValueError, match="fusion.unpad"):
        FusionConfig(unpad="sometimes")
    assert FusionConfig(unpad=True).unpad == "on"


@pytest.mark.parametrize("unpad", ["on", "off"])
@pytest.mark.parametrize("kind", ["early", "hybrid"])
def test_pooled_only_fusion_matches_the_full_last_layer(kind, unpad):
    """Without a reader of the fused tokens, the last layer runs for [CLS] alone
    (`Block.forward_first`): the same pooled features, logits and gradients."""
    batch = tiny_batch(images=3, texts=7)
    config = tiny_config(kind)
    config["fusion"]["unpad"] = unpad
    results = {}
    for tokens in (True, False):
        model = build(config).eval()
        feats = model.features(**batch, fused_tokens=tokens)
        logits = model.heads["answer"](feats)
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[tokens] = (feats, logits.detach(), grads)
    full, full_logits, full_grads = results[True]
    first, first_logits, first_grads = results[False]
    assert first.tokens is None and full.tokens is not None
    torch.testing.assert_close(first.pooled, full.pooled)
    torch.testing.assert_close(first_logits, full_logits)
    assert first_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(first_grads[name], full_grads[name], msg=name)


def test_the_model_computes_fused_tokens_only_for_a_head_that_reads_them():
    batch = tiny_batch(images=3, texts=5)
    captioner = tiny_model(heads={"answer": {"type": "classification", "num_outputs": 5},
                                  "caption": {"type": "caption", "num_outputs": 40}})
    assert captioner.reads_fused_tokens() and not captioner.reads_fused_tokens(["answer"])
    assert not tiny_model().reads_fused_tokens()
    pooled_only = tiny_model().eval()
    torch.testing.assert_close(
        pooled_only(**batch)["answer"], pooled_only.heads["answer"](pooled_only.features(**batch))
    )
    captions = captioner(**batch, caption_ids=torch.full((5, 4), 5))["caption"]  # fused tokens read
    assert captions.shape[:2] == (5, 4)
    with pytest.raises(ValueError, match="fused_tokens=True"):
        captioner.heads["caption"](captioner.features(**batch, fused_tokens=False), torch.full((5, 4), 5))


@pytest.mark.parametrize("unpad", ["on", "off"])
def test_pooled_only_fusion_without_layers(unpad):
    """fusion.depth 0: no last layer to narrow; [CLS] is the normed text token."""
    config = tiny_config()
    config["fusion"].update(depth=0, unpad=unpad)
    model = build(config).eval()
    batch = tiny_batch()
    torch.testing.assert_close(
        model.features(**batch, fused_tokens=False).pooled, model.features(**batch).pooled
    )


def test_pooled_only_fusion_with_padding_first_falls_back_to_the_full_layer():
    """A sequence whose first position is padding has no [CLS] row to keep: the full
    last layer runs, and `tokens` comes back."""
    batch = tiny_batch(images=3, texts=5)
    batch["attention_mask"][0, 0] = 0
    config = tiny_config()
    config["fusion"]["unpad"] = "on"
    feats = build(config).eval().features(**batch, fused_tokens=False)
    assert feats.tokens is not None
