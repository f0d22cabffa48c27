"""Metrics torchmetrics does not have in the form the tasks need.

- `retrieval_recall`: recall@k with several relevant items per query (an image has
  five COCO captions; on easy-VQA a caption fits every image of its colour and
  shape), computed in query chunks so 5k x 25k scores never need a dense relevance
  matrix. A query counts as a hit when any relevant item is in its top k.
- `cider_d`: CIDEr-D (Vedantam et al. 2015) exactly as pycocoevalcap's `Cider`
  computes it (n = 1..4 TF-IDF vectors, document frequencies from the references of
  the evaluated set, clipped candidate counts, Gaussian length penalty sigma = 6,
  x10), including its choice of the bigram count as the "length". No Java needed.
- `bleu`: corpus BLEU-1..4 exactly as pycocoevalcap's `Bleu(4)` computes it (clipped
  n-gram counts against the per-n-gram maximum over references, brevity penalty
  against the closest reference length, 1e-15 / 1e-9 guards on empty counts).
  torchmetrics' BLEU returns 0 as soon as one order has no match, before any
  smoothing, so three-word captions would all score 0; here a perfect three-word
  caption gets BLEU-3 = 1 and BLEU-4 = (1e-15 / 1e-9) ** 0.25 = 0.03, as in COCO's
  own evaluation: BLEU-4 needs captions of four words or more to mean anything.
- `caption_words`: the tokenisation both sides of a caption metric use (lower case,
  punctuation removed, split on whitespace), like the PTB tokenizer of the COCO
  caption evaluation without its Java.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def caption_words(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


def retrieval_recall(
    scores: torch.Tensor,  # (Q, G) higher = more similar
    relevant: torch.Tensor,  # (P, 2) int64 pairs (query, gallery item) that match
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[int, float]:
    """Mean over queries with at least one relevant item of [a relevant item in top k]."""
    q, g = scores.shape
    top = max(min(max(ks), g), 1)
    hits = {k: 0 for k in ks}
    has_relevant = torch.zeros(q, dtype=torch.bool)
    has_relevant[relevant[:, 0]] = True
    order = torch.argsort(relevant[:, 0])
    pairs = relevant[order]
    bounds = torch.searchsorted(pairs[:, 0].contiguous(), torch.arange(0, q + chunk, chunk).clamp(max=q))
    for c, start in enumerate(range(0, q, chunk)):
        stop = min(start + chunk, q)
        block = pairs[bounds[c] : bounds[c + 1]]
        rel = torch.zeros(stop - start, g, dtype=torch.bool)
        rel[block[:, 0] - start, block[:, 1]] = True
        ranked = scores[start:stop].topk(top, dim=1).indices  # (C, top)
        found = rel.gather(1, ranked)  # (C, top)
        for k in ks:
            hits[k] += int(found[:, :k].any(1).sum())
    n = int(has_relevant.sum())
    return {k: hits[k] / n if n else float("nan") for k in ks}


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n over word-tokenised captions (see the module docstring)."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"{len(candidates)} candidates and {len(references)} reference sets")
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        words = caption_words(cand)
        counts = _ngrams(words, n)
        ref_words = [caption_words(r) for r in refs]
        max_counts: Counter = Counter()
        for r in ref_words:
            max_counts |= _ngrams(r, n)  # per n-gram maximum over the references
        lengths = [len(r) for r in ref_words]
        ref_len += min((abs(length - len(words)), length) for length in lengths)[1]
        test_len += len(words)
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(max_counts[gram], count)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0, n: int = 4
) -> float:
    """Corpus CIDEr-D: the mean per-candidate score (see the module docstring)."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"{len(candidates)} candidates and {len(references)} reference sets")
    cands = [_ngrams(caption_words(c), n) for c in candidates]
    refs = [[_ngrams(caption_words(r), n) for r in rs] for rs in references]
    doc_freq: Counter = Counter()
    for rs in refs:
        doc_freq.update({g for r in rs for g in r})
    log_docs = math.log(float(len(refs)))

    def vector(counts: Counter):
        vec = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:  # pycocoevalcap counts bigrams as the length
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rs in zip(cands, refs, strict=True):
        vec, norm, length = vector(cand)
        total = np.zeros(n)
        for r in rs:
            vec_r, norm_r, length_r = vector(r)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(v, vec_r[k][g]) * vec_r[k][g] for g, v in vec[k].items())
                if norm[k] and norm_r[k]:
                    val /= norm[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(float(total.mean()) / max(len(rs), 1) * 10.0)
    return float(np.mean(scores))
