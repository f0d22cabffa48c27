"""Training throughput: image-major vs per-question batching on the same model.

Image-major batches run the vision tower once per unique image, and on CPU all the
questions of one image cross-attend it as one query sequence (`fusion.unpad`);
per-question batches repeat the image for every question. Both see the same
questions per step, with the text tower run once per distinct question of a batch
(`text.unpad`), and with only the pooled [CLS] read, the last fusion layer runs for
[CLS] alone. MFU is the FLOPs the step executes (counted) per second against an fp32
matmul peak measured in this same run.

The machine's speed drifts by 10-20% within seconds (a shared VM), so the figures
come from `--rounds` rounds, each timing a peak trial, image-major and per-question
steps back to back: the rates are the medians over the rounds, the speedup the median
of the rounds' ratios, and the peak the best trial (a peak is what the machine can
reach; one short trial can land low and flatter the MFU).

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--rounds 3] [--preset cpu]

Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from multimodal_doubleloop.data.batching import EncodedSplit, ImageMajorBatches, collate
from multimodal_doubleloop.data.images import InMemoryImages
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config

logger = logging.getLogger("train_throughput")
ROOT = Path(__file__).resolve().parents[1]


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def synthetic_split(
    images: int, questions_per_image: int, length: int, vocab: int, answers: int, distinct: int = 107
):
    """easy-VQA-shaped data: ~10 questions of ~10 tokens per 64x64 image, each drawn
    from `distinct` question strings (easy-VQA has 107, so a batch repeats some)."""
    g = torch.Generator().manual_seed(0)
    n = images * questions_per_image
    lengths = torch.randint(7, length + 1, (distinct,), generator=g)
    pool_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    pool = torch.randint(5, vocab, (distinct, length), generator=g) * pool_mask
    which = torch.randint(0, distinct, (n,), generator=g)
    ids, mask = pool[which], pool_mask[which]
    split = EncodedSplit(
        image_rows=torch.arange(images).repeat_interleave(questions_per_image),
        input_ids=ids,
        attention_mask=mask,
        labels=torch.randint(0, answers, (n,), generator=g),
    )
    pixels = np.random.default_rng(0).integers(0, 256, (images, 64, 64, 3), dtype=np.uint8)
    return split, InMemoryImages(pixels)


def per_question(batch: dict) -> dict:
    """The same questions, each with its own copy of its image."""
    out = dict(batch)
    out["images"] = batch["images"][batch["image_index"]]
    out["image_index"] = torch.arange(len(batch["image_index"]))
    return out


def step_fn(model, optimizer):
    def step(batch):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(tasks=["answer"], **inputs)["answer"]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(step, batches, warmup: int) -> float:
    """Questions per second over `batches` after `warmup` untimed steps."""
    for b in batches[:warmup]:
        step(b)
    start = time.perf_counter()
    questions = 0
    for b in batches[warmup:]:
        step(b)
        questions += len(b["labels"])
    return questions / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="peak, image-major and per-question timings, repeated")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--images-per-batch", type=int, default=16)
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    model_params = yaml.safe_load((ROOT / "conf/base/parameters_model.yml").read_text())["model"]
    model_params["preset"] = args.preset
    config = resolve_model_config(model_params, vocab_size=123, max_length=16, num_answers=13)
    model = build_model(ModelConfig.from_dict(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training.optim
    step = step_fn(model, optimizer)

    n_images = args.images_per_batch * (args.steps + args.warmup)
    split, images = synthetic_split(n_images, 10, 12, 123, 13)
    sampler = ImageMajorBatches(split.image_rows, args.images_per_batch, shuffle=True, seed=0)
    image_major = [collate(split, images, idx) for idx in sampler]
    questions = [per_question(b) for b in image_major]

    with FlopCounterMode(display=False) as counter:
        step(image_major[0])
    flops_per_question = counter.get_total_flops() / len(image_major[0]["labels"])

    peaks, im_rates, pq_rates = [], [], []
    for _ in range(args.rounds):
        peaks.append(matmul_peak_gflops())
        im_rates.append(measure(step, image_major, args.warmup))
        pq_rates.append(measure(step, questions, args.warmup))
    peak = max(peaks)
    im_qps, pq_qps = statistics.median(im_rates), statistics.median(pq_rates)
    ratios = [i / q for i, q in zip(im_rates, pq_rates, strict=True)]
    speedup = statistics.median(ratios)
    mfu = im_qps * flops_per_question / (peak * 1e9)
    logger.info("fp32 matmul peak %.1f GFLOP/s (trials %s); model %.1f MFLOP per question (fwd+bwd, image-major)",
                peak, [round(p) for p in peaks], flops_per_question / 1e6)
    logger.info("image-major %.0f q/s (rounds %s), per-question %.0f q/s (rounds %s), speedup %.2fx, MFU %.1f%%",
                im_qps, [round(r) for r in im_rates], pq_qps, [round(r) for r in pq_rates], speedup, 100 * mfu)
    print(json.dumps({  # noqa: T201 - the benchmark's result line
        "preset": args.preset,
        "image_major_qps": round(im_qps, 1),
        "per_question_qps": round(pq_qps, 1),
        "speedup": round(speedup, 3),
        "speedup_rounds": [round(r, 3) for r in ratios],
        "mfu": round(mfu, 4),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_trials": [round(p, 1) for p in peaks],
        "mflops_per_question": round(flops_per_question / 1e6, 2),
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
