"""Forward+backward samples/s of our towers against peer implementations.

Our `VisionTransformer` against timm's `VisionTransformer`, our `TextEncoder`
against Hugging Face's `BertModel` (SDPA attention), at identical dimensions,
fp32, train mode, dropout off. Sizes: the CPU preset, a middle size, and the
seed preset at a small batch. Each size warms both models up, then times
alternating iterations (ours, peer, peer, ours, ...) so drift in a shared
machine's load hits both alike; the ratio ours/peer is the median of per-pair
ratios, samples/s come from median iteration times.

What differs, by design: our text tower runs its per-token layers on the real
tokens only (`text.unpad`, on by default on CPU), so the padding in these batches
(lengths drawn from half to full) costs it nothing; BertModel computes it. Our
patch embedding is one matmul over flattened patches; timm's is a convolution.
Everything else runs the same kernels, so those sizes sit near parity.

    .venv/bin/pip install -e ".[bench]"   # timm, transformers
    .venv/bin/python benchmarks/peer_towers.py [--budget 8] [--sizes cpu,mid,seed] [--threads 1]

One thread by default, timed on process CPU time: on a machine shared with other
jobs that keeps their load out of the comparison. `--threads N` (N > 1) times on
the wall clock and suits a quiet machine.

Figures are logged to stderr; the last line of stdout is one JSON object:
`vision_vs_timm` and `text_vs_hf` (the smallest ours/peer ratio over the sizes)
and per-size details.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from multimodal_doubleloop.models.text import TextConfig, TextEncoder
from multimodal_doubleloop.models.vision import VisionConfig, VisionTransformer, init_weights

logger = logging.getLogger("peer_towers")

# The CPU preset, a middle size, and the seed preset (512 wide, 12 deep) at a small batch.
# fmt: off
VISION_SIZES = [
    {"name": "cpu", "image_size": 64, "patch_size": 16, "dim": 128, "depth": 3, "heads": 4, "batch": 32},
    {"name": "mid", "image_size": 128, "patch_size": 16, "dim": 256, "depth": 6, "heads": 8, "batch": 8},
    {"name": "seed", "image_size": 224, "patch_size": 16, "dim": 512, "depth": 12, "heads": 8, "batch": 2},
]
TEXT_SIZES = [
    {"name": "cpu", "vocab": 1000, "seq": 32, "dim": 128, "depth": 2, "heads": 4, "batch": 64},
    {"name": "mid", "vocab": 8000, "seq": 64, "dim": 256, "depth": 6, "heads": 8, "batch": 16},
    {"name": "seed", "vocab": 30522, "seq": 32, "dim": 512, "depth": 12, "heads": 8, "batch": 4},
]
# fmt: on


def train_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor], clock) -> float:
    """One forward+backward; returns its duration in seconds on `clock`."""
    start = clock()
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return clock() - start


def race(ours, peer, clock, warmup: int, min_iters: int, max_iters: int, budget_s: float) -> dict:
    """Time alternating iterations of `ours` and `peer` (each a (model, loss_fn)).

    Runs at least `min_iters` pairs, then more while the size's time budget lasts.
    The ratio is the median of per-pair ratios: the two runs of a pair see the
    same machine load, which matters on a shared machine.
    """
    for _ in range(warmup):
        train_step(*ours, clock)
        train_step(*peer, clock)
    times_ours, times_peer = [], []
    start = time.perf_counter()
    while len(times_ours) < max_iters and (
        len(times_ours) < min_iters or time.perf_counter() - start < budget_s
    ):
        # Alternate which goes first so neither always runs in the other's wake.
        if len(times_ours) % 2 == 0:
            times_ours.append(train_step(*ours, clock))
            times_peer.append(train_step(*peer, clock))
        else:
            times_peer.append(train_step(*peer, clock))
            times_ours.append(train_step(*ours, clock))
    return {
        "seconds_ours": statistics.median(times_ours),
        "seconds_peer": statistics.median(times_peer),
        "ratio": statistics.median(p / o for o, p in zip(times_ours, times_peer, strict=True)),
        "iters": len(times_ours),
    }


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vision_pair(size: dict):
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = VisionConfig(
        image_size=size["image_size"],
        patch_size=size["patch_size"],
        dim=size["dim"],
        depth=size["depth"],
        heads=size["heads"],
        stem_channels=[],  # plain patch embedding, as timm's
    )
    ours = VisionTransformer(cfg)
    ours.apply(init_weights)
    peer = TimmViT(
        img_size=size["image_size"],
        patch_size=size["patch_size"],
        embed_dim=size["dim"],
        depth=size["depth"],
        num_heads=size["heads"],
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
    )
    images = torch.rand(size["batch"], 3, size["image_size"], size["image_size"])

    def ours_loss():
        pooled, tokens = ours(images)
        return pooled.mean() + tokens.mean()

    def peer_loss():
        x = peer.forward_features(images)  # (B, 1+N, D), final norm applied
        return x[:, 0].mean() + x[:, 1:].mean()

    return (ours.train(), ours_loss), (peer.train(), peer_loss)


def text_pair(size: dict):
    from transformers import BertConfig, BertModel

    ours = TextEncoder(
        TextConfig(
            vocab_size=size["vocab"],
            max_length=size["seq"],
            dim=size["dim"],
            depth=size["depth"],
            heads=size["heads"],
        )
    )
    ours.apply(init_weights)
    config = BertConfig(
        vocab_size=size["vocab"],
        hidden_size=size["dim"],
        num_hidden_layers=size["depth"],
        num_attention_heads=size["heads"],
        intermediate_size=4 * size["dim"],
        max_position_embeddings=size["seq"],
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    peer = BertModel._from_config(config, attn_implementation="sdpa", add_pooling_layer=False)
    if peer.config._attn_implementation != "sdpa":
        raise RuntimeError(f"BertModel runs {peer.config._attn_implementation!r}, not sdpa")
    b, t = size["batch"], size["seq"]
    input_ids = torch.randint(7, size["vocab"], (b, t))
    lengths = torch.randint(t // 2, t + 1, (b,))  # real padding: half to full length
    attention_mask = (torch.arange(t)[None] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # [PAD] = 0
    token_type_ids = torch.zeros_like(input_ids)

    def ours_loss():
        pooled, tokens = ours(input_ids, attention_mask, token_type_ids)
        return pooled.mean() + tokens.mean()

    def peer_loss():
        x = peer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (B, T, D)
        return x[:, 0].mean() + x.mean()

    return (ours.train(), ours_loss), (peer.train(), peer_loss)


def run(kind: str, sizes: list[dict], make_pair, peer_name: str, **timing_args):
    details = []
    for size in sizes:
        torch.manual_seed(0)
        ours, peer = make_pair(size)
        timing = race(ours, peer, **timing_args)
        row = {
            "size": size["name"],
            **{k: v for k, v in size.items() if k != "name"},
            "params_ours": n_params(ours[0]),
            "params_peer": n_params(peer[0]),
            "samples_per_s_ours": round(size["batch"] / timing["seconds_ours"], 2),
            "samples_per_s_peer": round(size["batch"] / timing["seconds_peer"], 2),
            "ratio": round(timing["ratio"], 3),
            "iters": timing["iters"],
        }
        logger.info(
            "%s %-4s dim=%d depth=%d batch=%d: ours %.1f samples/s, %s %.1f samples/s, "
            "ratio %.3f over %d pairs (params %.2fM vs %.2fM)",
            kind,
            size["name"],
            size["dim"],
            size["depth"],
            size["batch"],
            row["samples_per_s_ours"],
            peer_name,
            row["samples_per_s_peer"],
            row["ratio"],
            row["iters"],
            row["params_ours"] / 1e6,
            row["params_peer"] / 1e6,
        )
        details.append(row)
        del ours, peer
    return details


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model")
    parser.add_argument("--min-iters", type=int, default=8, help="timed pairs per size, at least")
    parser.add_argument("--max-iters", type=int, default=40, help="timed pairs per size, at most")
    parser.add_argument(
        "--budget", type=float, default=8.0, help="seconds of timed pairs per size past min-iters"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: timed on process CPU time; more: on wall time; 0: torch default)",
    )
    parser.add_argument(
        "--sizes", default="cpu,mid,seed", help="comma-separated subset of cpu, mid, seed"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    # One thread timed on process CPU time counts only the cycles the step ran, so
    # other jobs on a shared machine stay out of the figures. With more threads,
    # idle or spinning threads distort CPU time, so the wall clock is used.
    clock_name = "process_cpu" if threads == 1 else "wall"
    clock = time.process_time if threads == 1 else time.perf_counter
    logger.info(
        "torch %s, %d thread(s), fp32, CPU, %s clock", torch.__version__, threads, clock_name
    )
    timing = {
        "clock": clock,
        "warmup": args.warmup,
        "min_iters": args.min_iters,
        "max_iters": args.max_iters,
        "budget_s": args.budget,
    }
    wanted = set(args.sizes.split(","))
    unknown = wanted - {s["name"] for s in VISION_SIZES}
    if unknown:
        parser.error(f"unknown size(s) {sorted(unknown)}; use cpu, mid, seed")
    vision_sizes = [s for s in VISION_SIZES if s["name"] in wanted]
    text_sizes = [s for s in TEXT_SIZES if s["name"] in wanted]
    vision = run("vision", vision_sizes, vision_pair, "timm", **timing)
    text = run("text", text_sizes, text_pair, "hf-bert", **timing)
    result = {
        "vision_vs_timm": min(r["ratio"] for r in vision),
        "text_vs_hf": min(r["ratio"] for r in text),
        "threads": threads,
        "clock": clock_name,
        "vision": vision,
        "text": text,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
