"""Greedy and beam search on hand-made next-token distributions."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal_doubleloop.models.generation import beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2


def markov(table: torch.Tensor):
    """step() of a first-order chain: next-token log-probs depend on the last token
    (and on the sample row when `table` is (B, V, V))."""
    logp = table.log_softmax(-1)

    def step(prefix, sample):
        last = prefix[:, -1]
        return logp[last] if logp.dim() == 2 else logp[sample, last]

    return step


def seq_logp(table: torch.Tensor, ids: list[int]) -> float:
    logp, prev, total = table.log_softmax(-1), BOS, 0.0
    for tok in ids:
        if prev == EOS:
            break
        total += float(logp[prev, tok])
        prev = tok
    return total


def test_beam_finds_the_likelier_sequence_greedy_misses():
    # From BOS: token 3 (p=0.55) or 4 (p=0.45). After 3 every next token is equally
    # unlikely; after 4, EOS is almost certain. Greedy takes 3, beam 2 finds 4 EOS.
    v = 6
    probs = torch.full((v, v), 1e-6)
    probs[BOS, 3], probs[BOS, 4] = 0.55, 0.45
    probs[3, 2:] = 0.25  # EOS, 3, 4, 5 uniformly
    probs[4, EOS] = 0.99
    probs[4, 5] = 0.01
    probs[5, EOS] = 1.0
    table = probs.log()
    greedy = greedy_search(markov(table), 1, BOS, EOS, PAD, max_new_tokens=4)
    beam = beam_search(markov(table), 1, 2, BOS, EOS, PAD, max_new_tokens=4)
    assert greedy[0, :2].tolist() == [3, EOS]
    assert beam[0, :2].tolist() == [4, EOS]
    assert seq_logp(table, beam[0].tolist()) > seq_logp(table, greedy[0].tolist())
    assert math.isclose(seq_logp(table, [4, EOS]), math.log(0.45 * 0.99), rel_tol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_beam_one_equals_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(4, 12, 12, generator=g) * 3  # per-sample chains, EOS reachable
    table[..., PAD] = -1e4  # pad is never chosen by a live sequence
    greedy = greedy_search(markov(table), 4, BOS, EOS, PAD, max_new_tokens=9)
    beam = beam_search(markov(table), 4, 1, BOS, EOS, PAD, max_new_tokens=9)
    assert torch.equal(greedy, beam)
    assert len(set(greedy.flatten().tolist())) > 3  # not a degenerate constant output


def test_length_limit_and_padding_after_eos():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(12, 12, generator=g)
    table[:, PAD] = -1e4
    table[:, EOS] = -1e4  # EOS only right after token 7, which the argmax path never visits
    table[7, EOS] = 10.0
    table[BOS, 7] = table[BOS].max() - 0.5  # second choice from BOS
    step = markov(table)
    greedy = greedy_search(step, 3, BOS, EOS, PAD, max_new_tokens=6)
    assert greedy.shape == (3, 6) and EOS not in greedy  # stopped by the length limit
    beam = beam_search(step, 3, 3, BOS, EOS, PAD, max_new_tokens=6)
    assert beam.shape[1] <= 6
    # the beam finds 7 then EOS (one cheap detour), and pads after it
    assert beam.tolist() == [[7, EOS] + [PAD] * (beam.shape[1] - 2)] * 3


def test_stops_early_once_every_sequence_ended():
    table = torch.full((5, 5), -1e4)
    table[:, EOS] = 0.0
    calls = []

    def step(prefix, sample):
        calls.append(prefix.shape)
        return markov(table)(prefix, sample)

    out = greedy_search(step, 2, BOS, EOS, PAD, max_new_tokens=10)
    assert out.tolist() == [[EOS], [EOS]] and len(calls) == 1
    out = beam_search(markov(table), 2, 3, BOS, EOS, PAD, max_new_tokens=10)
    assert out.tolist() == [[EOS], [EOS]]


def test_beam_rejects_bad_sizes():
    table = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(markov(table), 1, 0, BOS, EOS, PAD, 3)
    with pytest.raises(ValueError, match="vocabulary"):
        beam_search(markov(table), 1, 4, BOS, EOS, PAD, 3)
