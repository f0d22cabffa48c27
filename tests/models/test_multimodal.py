"""The composed model: config boundary, checkpointing, freezing, one-tower models."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.models import ModelConfig

from .tiny import build, tiny_batch, tiny_config, tiny_model


def test_from_dict_rejects_misspelt_keys_with_their_path():
    cfg = tiny_config()
    cfg["heads"]["answer"]["num_output"] = 5
    with pytest.raises(ValueError, match=r"num_output.*model\.heads\.answer"):
        ModelConfig.from_dict(cfg)
    cfg = tiny_config()
    cfg["vision"]["layers"] = 2
    with pytest.raises(ValueError, match=r"layers.*model\.vision"):
        ModelConfig.from_dict(cfg)


def test_from_dict_rejects_mismatched_dims():
    cfg = tiny_config()
    cfg["text"]["dim"] = 64
    with pytest.raises(ValueError, match="dims must match"):
        ModelConfig.from_dict(cfg)


@pytest.mark.parametrize("kind", ["early", "late", "hybrid"])
def test_gradient_checkpointing_same_outputs_and_grads(kind):
    batch = tiny_batch()
    results = []
    for checkpointing in (False, True):
        cfg = tiny_config(kind, gradient_checkpointing=checkpointing)
        for part in ("vision", "text", "fusion"):
            cfg[part]["dropout"] = 0.1  # the recomputation must replay the same masks
        model = build(cfg)
        model.train()
        torch.manual_seed(1)
        logits = model(**batch)["answer"]
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0, l1)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


def test_set_grad_checkpointing_reaches_every_tower():
    model = tiny_model()
    model.set_grad_checkpointing(True)
    assert model.vision.grad_checkpointing and model.text.grad_checkpointing
    assert model.fusion.grad_checkpointing


def test_freeze_and_unfreeze_by_component():
    model = tiny_model()
    model.freeze("vision", "text")
    assert set(model.parameter_groups()) == {"fusion", "heads"}
    model(**tiny_batch())["answer"].sum().backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert any(p.grad is not None for p in model.fusion.parameters())
    model.freeze("vision", frozen=False)
    assert set(model.parameter_groups()) == {"vision", "fusion", "heads"}
    with pytest.raises(ValueError, match="unknown component"):
        model.freeze("decoder")


def test_image_only_and_text_only_models():
    image_only = tiny_model(text=None)
    batch = tiny_batch()
    out = image_only(images=batch["images"])["answer"]
    assert out.shape == (3, 5)
    with pytest.raises(ValueError, match="no text tower"):
        image_only(**batch)
    text_only = tiny_model(vision=None)
    out = text_only(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out["answer"].shape == (5, 5)
    with pytest.raises(ValueError, match="no vision tower"):
        text_only(**batch)


def test_repeated_texts_run_the_text_tower_once_each(monkeypatch):
    """Rows with the same text (image-major batches repeat questions) are encoded once
    and shared: the same features and gradients as encoding every row."""
    from multimodal_doubleloop.models.text import TextEncoder

    batch = tiny_batch(images=3, texts=4)
    for key in ("input_ids", "attention_mask"):  # rows 4..7 repeat rows 0..3
        batch[key] = torch.cat([batch[key], batch[key]])
    batch["image_index"] = torch.arange(8) % 3
    rows_seen = []
    encode = TextEncoder.forward
    monkeypatch.setattr(TextEncoder, "forward", lambda self, ids, *a: rows_seen.append(len(ids)) or encode(self, ids, *a))
    results = []
    for dedup in (True, False):
        model = tiny_model("hybrid", text={**tiny_config()["text"], "unpad": "on" if dedup else "off"})
        model.eval()
        feats = model.features(**batch)
        (feats.pooled.square().sum() + feats.text_pooled.sum()).backward()
        results.append((feats.pooled.detach(), feats.text_pooled.detach(), model.text.token_embed.weight.grad))
    assert rows_seen == [4, 8]  # once per distinct text, then (unpad off) once per row
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
