"""Vision tower: shapes, backward, position embeddings, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multimodal_doubleloop.models.vision import (
    VisionConfig,
    VisionTransformer,
    init_weights,
    patch_embed,
    sincos_2d,
)


def tiny_vit(seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    cfg = {
        "image_size": 32,
        "patch_size": 8,
        "stem_channels": [8],
        "dim": 32,
        "depth": 2,
        "heads": 2,
    }
    model = VisionTransformer(VisionConfig(**{**cfg, **kw}))
    model.apply(init_weights)
    return model


@pytest.mark.parametrize("stem", [[], [8], [8, 16]])
@pytest.mark.parametrize("position", ["learned", "sincos"])
def test_forward_backward_shapes(stem, position):
    model = tiny_vit(stem_channels=stem, position_embedding=position)
    pooled, tokens = model(torch.rand(3, 3, 32, 32))
    assert pooled.shape == (3, 32)
    assert tokens.shape == (3, 16, 32)  # (32 / 8) ** 2 patches
    (pooled.sum() + tokens.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(tokens).all()


def test_sincos_is_fixed_and_distinct():
    model = tiny_vit(position_embedding="sincos")
    assert "pos_embed" not in dict(model.named_parameters())
    table = sincos_2d(4, 32)  # (16, 32)
    assert table.shape == (16, 32)
    # every patch position gets its own code
    assert torch.cdist(table, table).add(torch.eye(16)).min() > 0.1


def test_rejects_wrong_image_size():
    with pytest.raises(ValueError, match="32x32"):
        tiny_vit()(torch.rand(1, 3, 48, 48))


def test_config_checks_stem_stride():
    with pytest.raises(ValueError, match="stem"):
        VisionConfig(patch_size=8, stem_channels=[8, 16, 32, 64])


def test_gradient_checkpointing_same_outputs_and_grads():
    """Checkpointed blocks recompute in backward with the same dropout masks."""
    images = torch.rand(2, 3, 32, 32)
    results = []
    for checkpointing in (False, True):
        model = tiny_vit(dropout=0.1)
        model.train()
        model.grad_checkpointing = checkpointing
        torch.manual_seed(1)
        pooled, tokens = model(images)
        (pooled.square().sum() + tokens.mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((pooled.detach(), tokens.detach(), grads))
    (p0, t0, g0), (p1, t1, g1) = results
    torch.testing.assert_close(p0, p1)
    torch.testing.assert_close(t0, t1)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_embedding_is_the_strided_convolution(channels_last):
    """The matmul form of the patch embedding gives the convolution's tokens and
    weight gradient."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 4, stride=4)
    x = torch.randn(3, 8, 16, 16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours = patch_embed(conv, x)
    ours.square().sum().backward()
    grad = conv.weight.grad.clone()
    conv.zero_grad()
    reference = conv(x).flatten(2).transpose(1, 2)  # (B, N, D)
    reference.square().sum().backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad, conv.weight.grad)
