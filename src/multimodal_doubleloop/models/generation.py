"""Autoregressive decoding: greedy and beam search over a next-token function.

Both take `step(prefix, sample) -> log_probs`: prefixes (N, t) that start with
[BOS], the sample row (N,) each prefix belongs to, and next-token log-probs
(N, V). Both return (B, L) ids without [BOS]: a sequence ends with [EOS] where
one was produced and is padded with [PAD] after it; L <= max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def greedy_search(
    step: Step,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    seq = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)  # (B, 1)
    sample = torch.arange(batch_size, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        live = ~done
        token = torch.full((batch_size,), pad_id, dtype=torch.long, device=device)
        token[live] = step(seq[live], sample[live]).argmax(-1)  # only unfinished rows
        seq = torch.cat([seq, token[:, None]], 1)
        done |= token == eos_id
        if bool(done.all()):
            break
    return seq[:, 1:]


def beam_search(
    step: Step,
    batch_size: int,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
    length_penalty: float = 0.0,
) -> torch.Tensor:
    """Keep the `beam_size` best prefixes per sample by summed log-prob.

    A finished hypothesis stays in its slot and only extends with [PAD] at zero
    cost, so with beam_size=1 every step is the argmax: exactly greedy. The best
    hypothesis is chosen at the end by score / length ** length_penalty
    (0 = raw log-prob; > 0 favours longer sequences). With length_penalty=0 the
    search stops as soon as every sample's best finished hypothesis outscores its
    live ones, since extending a live one can only lower its score.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    b, k = batch_size, beam_size
    seq = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)  # (B*K, 1)
    sample = torch.arange(b, device=device).repeat_interleave(k)  # (B*K,)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so the first step fans out
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    length = torch.zeros(b * k, device=device)  # generated tokens, [EOS] included
    base = (torch.arange(b, device=device) * k)[:, None]  # (B, 1)
    for _ in range(max_new_tokens):
        logp = step(seq, sample)  # (B*K, V)
        vocab = logp.shape[-1]
        if k > vocab:
            raise ValueError(f"beam_size={k} exceeds the vocabulary size {vocab}")
        frozen = torch.full_like(logp[0], float("-inf"))
        frozen[pad_id] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        candidates = (scores.reshape(-1, 1) + logp).view(b, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)  # (B, K)
        parent = (base + flat // vocab).view(-1)  # (B*K,) rows of the previous step
        token = (flat % vocab).view(-1)
        seq = torch.cat([seq[parent], token[:, None]], 1)
        length = length[parent] + (~done[parent]).float()
        done = done[parent] | (token == eos_id)
        if bool(done.all()) or (length_penalty == 0 and _settled(scores, done.view(b, k))):
            break
    final = scores / length.view(b, k).clamp(min=1) ** length_penalty  # (B, K)
    best = final.argmax(-1)  # (B,)
    return seq.view(b, k, -1)[torch.arange(b, device=device), best, 1:]


def _settled(scores: torch.Tensor, done: torch.Tensor) -> bool:
    """With raw log-prob scores a live beam can only lose score, so a sample whose
    best finished hypothesis beats all its live ones is decided."""
    neg_inf = torch.full_like(scores, float("-inf"))
    best_done = torch.where(done, scores, neg_inf).amax(-1)  # (B,)
    best_live = torch.where(done, neg_inf, scores).amax(-1)
    return bool((best_done >= best_live).all())
