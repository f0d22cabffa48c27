"""Text tower: shapes, padding invariance, segments, checkpointing."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.models.text import TextConfig, TextEncoder
from multimodal_doubleloop.models.vision import init_weights


def tiny_text(seed: int = 0, **kw) -> TextEncoder:
    torch.manual_seed(seed)
    cfg = {"vocab_size": 60, "max_length": 16, "dim": 32, "depth": 2, "heads": 2}
    model = TextEncoder(TextConfig(**{**cfg, **kw}))
    model.apply(init_weights)
    return model


def ragged(b: int = 4, t: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 3, 5, 1])[:b]
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = torch.randint(7, 60, (b, t), generator=g) * mask
    return ids, mask


def test_forward_backward_shapes():
    model = tiny_text()
    ids, mask = ragged()
    pooled, tokens = model(ids, mask)
    assert pooled.shape == (4, 32) and tokens.shape == (4, 8, 32)
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(pooled, tokens[:, 0])
    (pooled.sum() + tokens.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("unpad", ["on", "off"])
def test_padding_does_not_change_real_tokens(unpad):
    """Appending pad positions, whatever ids they hold, leaves real tokens unchanged."""
    model = tiny_text(unpad=unpad).eval()
    ids, mask = ragged()
    _, tokens = model(ids, mask)
    extra = 5
    junk = torch.randint(0, 60, (4, extra))  # ids at masked positions must not matter
    padded_ids = torch.cat([ids.masked_fill(mask == 0, 0), junk], 1)
    padded_mask = torch.cat([mask, torch.zeros(4, extra, dtype=mask.dtype)], 1)
    _, padded = model(padded_ids, padded_mask)
    for row, length in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(padded[row, :length], tokens[row, :length])


def test_token_types_change_output():
    model = tiny_text().eval()
    ids, mask = ragged()
    _, a = model(ids, mask)
    _, b = model(ids, mask, token_type_ids=torch.ones_like(ids))
    assert (a - b).abs().max() > 1e-3


def test_rejects_too_long():
    with pytest.raises(ValueError, match="max_length"):
        tiny_text()(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17))


def test_gradient_checkpointing_same_outputs_and_grads():
    ids, mask = ragged()
    results = []
    for checkpointing in (False, True):
        model = tiny_text(dropout=0.1).train()
        model.grad_checkpointing = checkpointing
        torch.manual_seed(1)
        pooled, tokens = model(ids, mask)
        (pooled.square().sum() + tokens.mean()).backward()
        results.append((tokens.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (t0, g0), (t1, g1) = results
    torch.testing.assert_close(t0, t1)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_unpadded_run_matches_padded_run(pool):
    """Skipping the padding in the per-token layers changes no real output or gradient;
    the padded positions come out as zeros."""
    ids, mask = ragged()
    results = {}
    for unpad in ("on", "off"):
        model = tiny_text(unpad=unpad, pool=pool).train()
        pooled, tokens = model(ids, mask)
        real = tokens * mask.unsqueeze(-1)
        (pooled.square().sum() + real.square().mean()).backward()
        results[unpad] = (pooled.detach(), tokens.detach(), {n: p.grad for n, p in model.named_parameters()})
    (p_on, t_on, g_on), (p_off, t_off, g_off) = results["on"], results["off"]
    torch.testing.assert_close(p_on, p_off)
    real = mask.bool()
    torch.testing.assert_close(t_on[real], t_off[real])
    assert (t_on[~real] == 0).all()
    for name in g_on:
        torch.testing.assert_close(g_on[name], g_off[name], msg=name)


def test_unpad_setting_is_checked():
    with pytest.raises(ValueError, match="text.unpad"):
        TextConfig(unpad="yes")
    assert TextConfig(unpad=False).unpad == "off" and TextConfig(unpad=True).unpad == "on"  # YAML on/off
