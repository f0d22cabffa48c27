"""`models.blocks`: the pre-norm transformer block every tower is built from, its
attention (padding, causal and cross), token packing and `run_blocks`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from multimodal_doubleloop.models.blocks import (
    MLP,
    Attention,
    Block,
    Grouping,
    Packing,
    key_padding_mask,
    run_blocks,
)

DIM, HEADS = 16, 2


def block(seed: int = 0, **kw) -> Block:
    torch.manual_seed(seed)
    return Block(DIM, HEADS, mlp_ratio=2.0, **kw).eval()


def tokens(b: int = 3, t: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, DIM, generator=torch.Generator().manual_seed(seed))


LENGTHS = torch.tensor([6, 4, 1])
ATTENTION_MASK = (torch.arange(6)[None] < LENGTHS[:, None]).long()  # (3, 6) 1 = real token


def test_key_padding_mask_is_a_bool_key_mask():
    mask = key_padding_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 3)
    assert mask.tolist() == [[[True, True, False]], [[True, False, False]]]


# Packing


def test_packing_keeps_the_real_tokens_in_row_major_order():
    packing = Packing(torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]))
    assert packing.index.tolist() == [0, 1, 3, 6, 7, 8]
    x = torch.arange(9.0).view(3, 3)[..., None].expand(3, 3, 2)  # value = flat position
    packed = packing.pack(x)
    assert packed.shape == (6, 2)
    assert packed[:, 0].tolist() == [0.0, 1.0, 3.0, 6.0, 7.0, 8.0]


def test_unpack_puts_zeros_at_the_padding_and_inverts_pack():
    packing = Packing(ATTENTION_MASK)
    x = tokens()
    unpacked = packing.unpack(packing.pack(x))
    assert unpacked.shape == x.shape
    real = ATTENTION_MASK.bool()
    assert torch.equal(unpacked[real], x[real])
    assert torch.count_nonzero(unpacked[~real]) == 0
    assert torch.equal(packing.pack(unpacked), packing.pack(x))


# Grouping


def test_grouping_puts_each_group_in_one_padded_row_and_inverts():
    groups = torch.tensor([2, 0, 2, 2, 0])  # unsorted; group 1 is empty
    grouping = Grouping(groups, num_groups=3)
    assert grouping.length == 3  # most rows of one group
    x = torch.arange(5.0)[:, None].expand(5, 2)  # value = row
    grouped = grouping.scatter(x)
    assert grouped.shape == (3, 3, 2)
    assert grouped[0, :, 0].tolist() == [1.0, 4.0, 0.0]  # rows of group 0 in order, then padding
    assert grouped[1].abs().sum() == 0
    assert grouped[2, :, 0].tolist() == [0.0, 2.0, 3.0]
    assert torch.equal(grouping.gather(grouped), x)


def test_grouped_cross_attention_equals_gathered_memory():
    """All queries of one memory row in one sequence give what a copy of the memory
    per query row gives, in outputs and in gradients."""
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, cross=True)
    memory = torch.randn(3, 5, DIM)
    x = tokens(b=4, t=6)
    memory_index = torch.tensor([2, 0, 2, 1])
    results = []
    for grouped in (False, True):
        attn.zero_grad()
        m, q = memory.clone().requires_grad_(), x.clone().requires_grad_()
        if grouped:
            grouping = Grouping(memory_index.repeat_interleave(6), 3)
            out = attn(q, memory=m, grouping=grouping)
        else:
            out = attn(q, memory=m, memory_index=memory_index)
        out.square().sum().backward()
        results.append((out.detach(), q.grad, m.grad, attn.kv.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="no memory mask"):
        attn(x, memory=memory, grouping=Grouping(memory_index.repeat_interleave(6), 3),
             mask=torch.ones(4, 1, 5, dtype=torch.bool))


# Attention


def test_attention_dim_must_divide_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)


def reference_attention(attn: Attention, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(dh)) v per head by hand; `keep` (B, T, S) True = attend."""
    b, t, d = x.shape
    dh = d // attn.heads
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    q, k, v = (z.view(b, t, attn.heads, dh).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(~keep[:, None], float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_a_hand_written_reference(causal):
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS).eval()
    x = tokens()
    mask = key_padding_mask(ATTENTION_MASK)  # (B, 1, T)
    keep = mask.expand(3, 6, 6)
    if causal:
        keep = keep & torch.ones(6, 6, dtype=torch.bool).tril()
    # causal rows of the length-1 sample keep at least key 0, so no row is empty
    torch.testing.assert_close(attn(x, mask=mask, causal=causal), reference_attention(attn, x, keep))
    if causal:
        torch.testing.assert_close(
            attn(x, causal=True), reference_attention(attn, x, torch.ones(3, 6, 6, dtype=torch.bool).tril())
        )


# Block: shapes, masking, causality


def test_block_keeps_the_shape_and_backpropagates_to_every_parameter():
    model = block(cross=True).train()
    x = tokens().requires_grad_()
    memory = torch.randn(3, 5, DIM)
    out = model(x, mask=key_padding_mask(ATTENTION_MASK), memory=memory, causal=True)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_padded_tokens_do_not_change_the_real_outputs():
    model = block()
    x = tokens()
    mask = key_padding_mask(ATTENTION_MASK)
    real = ATTENTION_MASK.bool()
    other = x.clone()
    other[~real] = 100 * torch.randn(int((~real).sum()), DIM)
    out, out_other = model(x, mask=mask), model(other, mask=mask)
    torch.testing.assert_close(out[real], out_other[real])
    # without the mask the padding does leak in: the test above is not vacuous
    assert not torch.allclose(model(x)[real], model(other)[real], atol=1e-3)


def test_masked_sequence_equals_the_truncated_sequence():
    model = block()
    x = tokens()
    out = model(x, mask=key_padding_mask(ATTENTION_MASK))
    for i, length in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(out[i, :length], model(x[i : i + 1, :length])[0])


@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_outputs_depend_only_on_earlier_tokens(with_mask):
    model = block()
    x = tokens(b=2)
    mask = key_padding_mask(torch.ones(2, 6, dtype=torch.long)) if with_mask else None
    out = model(x, mask=mask, causal=True)
    for k in range(6):
        changed = x.clone()
        changed[:, k] += 5.0
        out_changed = model(changed, mask=mask, causal=True)
        torch.testing.assert_close(out_changed[:, :k], out[:, :k])
        assert not torch.allclose(out_changed[:, k:], out[:, k:], atol=1e-4)
    # each prefix is the sequence it would be alone
    torch.testing.assert_close(out[:, :3], model(x[:, :3], causal=True))


def test_causal_with_an_all_ones_mask_equals_causal_without_one():
    # the two code paths: an explicit tril mask and SDPA's is_causal
    model = block()
    x = tokens()
    torch.testing.assert_close(
        model(x, mask=key_padding_mask(torch.ones(3, 6, dtype=torch.long)), causal=True),
        model(x, causal=True),
    )
    assert not torch.allclose(model(x, causal=True), model(x), atol=1e-4)


def test_causal_and_padding_masks_combine():
    model = block()
    x = tokens()
    out = model(x, mask=key_padding_mask(ATTENTION_MASK), causal=True)
    for i, length in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(out[i, :length], model(x[i : i + 1, :length], causal=True)[0])


# Block: cross-attention


def test_cross_block_without_memory_is_the_self_attention_block():
    cross, plain = block(cross=True), block(seed=1)
    missing, unexpected = plain.load_state_dict(cross.state_dict(), strict=False)
    assert not missing and all(k.startswith(("cross_attn.", "norm_cross.")) for k in unexpected)
    x = tokens()
    torch.testing.assert_close(cross(x), plain(x))
    assert not torch.allclose(cross(x, memory=torch.randn(3, 4, DIM)), plain(x), atol=1e-4)


def test_memory_index_gathers_each_rows_memory():
    model = block(cross=True)
    x = tokens(b=4)
    memory = torch.randn(2, 5, DIM)  # two images
    index = torch.tensor([1, 0, 1, 1])  # four questions
    torch.testing.assert_close(
        model(x, memory=memory, memory_index=index), model(x, memory=memory[index])
    )


def test_memory_mask_hides_masked_memory_tokens():
    model = block(cross=True)
    x = tokens(b=2)
    memory = torch.randn(2, 5, DIM)
    memory_mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])[:, None]
    changed = memory.clone()
    changed[~memory_mask[:, 0]] = 50 * torch.randn(int((~memory_mask).sum()), DIM)
    out = model(x, memory=memory, memory_mask=memory_mask)
    torch.testing.assert_close(out, model(x, memory=changed, memory_mask=memory_mask))
    torch.testing.assert_close(out[1:], model(x[1:], memory=memory[1:, :1]))
    assert not torch.allclose(model(x, memory=memory), model(x, memory=changed), atol=1e-3)


# Block: dropout, packing


def test_eval_mode_turns_dropout_off():
    dropped, plain = block(dropout=0.5), block()
    dropped.load_state_dict(plain.state_dict())
    x = tokens()
    torch.testing.assert_close(dropped(x), plain(x))
    dropped.train()
    torch.manual_seed(0)
    assert not torch.allclose(dropped(x), plain(x), atol=1e-4)


def test_mlp_hidden_width_follows_the_ratio():
    mlp = MLP(DIM, 2.5)
    assert mlp.fc1.out_features == 40 and mlp.fc2.in_features == 40 and mlp.fc2.out_features == DIM


@pytest.mark.parametrize("causal", [False, True])
def test_packed_block_equals_the_padded_block_on_real_tokens(causal):
    model = block()
    x = tokens()
    mask = key_padding_mask(ATTENTION_MASK)
    packing = Packing(ATTENTION_MASK)
    packed_out = model(packing.pack(x), mask=mask, causal=causal, packing=packing)
    assert packed_out.shape == (int(ATTENTION_MASK.sum()), DIM)
    torch.testing.assert_close(packed_out, packing.pack(model(x, mask=mask, causal=causal)))


# run_blocks


def stack(depth: int = 3, **kw) -> nn.ModuleList:
    return nn.ModuleList(block(seed=i, **kw) for i in range(depth))


def test_run_blocks_applies_the_blocks_in_order_with_the_kwargs():
    blocks = stack()
    x = tokens()
    mask = key_padding_mask(ATTENTION_MASK)
    expected = reversed_order = x
    for i in range(3):
        expected = blocks[i](expected, mask=mask, causal=True)
        reversed_order = blocks[2 - i](reversed_order, mask=mask, causal=True)
    torch.testing.assert_close(run_blocks(blocks, x, False, mask=mask, causal=True), expected)
    assert not torch.allclose(expected, reversed_order, atol=1e-4)
    assert run_blocks(nn.ModuleList(), x, True) is x


def _outputs_and_grads(blocks, x, checkpointing, seed=0, **kwargs):
    x = x.clone().requires_grad_()
    blocks.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = run_blocks(blocks, x, checkpointing, **kwargs)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in blocks.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_the_same_outputs_and_gradients(dropout):
    blocks = stack(cross=True, dropout=dropout).train()
    x = tokens()
    kwargs = {
        "mask": key_padding_mask(ATTENTION_MASK),
        "memory": torch.randn(2, 4, DIM),
        "memory_index": torch.tensor([0, 1, 1]),
        "causal": True,
    }
    out, x_grad, grads = _outputs_and_grads(blocks, x, False, **kwargs)
    out_ck, x_grad_ck, grads_ck = _outputs_and_grads(blocks, x, True, **kwargs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_ck, out)
    torch.testing.assert_close(x_grad_ck, x_grad)
    assert grads_ck.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], msg=name)


def test_checkpointing_with_packing_gives_the_same_gradients():
    blocks = stack()
    packing = Packing(ATTENTION_MASK)
    x = packing.pack(tokens())
    kwargs = {"mask": key_padding_mask(ATTENTION_MASK), "packing": packing}
    out, x_grad, grads = _outputs_and_grads(blocks, x, False, **kwargs)
    out_ck, x_grad_ck, grads_ck = _outputs_and_grads(blocks, x, True, **kwargs)
    torch.testing.assert_close(out_ck, out)
    torch.testing.assert_close(x_grad_ck, x_grad)
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], msg=name)


def test_checkpointing_under_no_grad_runs_the_plain_path():
    blocks = stack()
    x = tokens()
    with torch.no_grad():
        out = run_blocks(blocks, x, True)
    assert not out.requires_grad
    torch.testing.assert_close(out, run_blocks(blocks, x, False).detach())
