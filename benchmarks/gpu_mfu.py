"""Model FLOPs utilisation of a training step on synthetic data.

On CUDA: the `seed` preset (512 hidden, 12/12/6 layers), bf16 autocast, fused
AdamW, SDPA attention, the largest batch that fits (doubling until OOM), optional
`torch.compile`; MFU against the device's dense bf16 peak. On CPU (no GPU here):
the same code with a tiny batch, fp32, against a matmul peak measured in this run.

    .venv/bin/python benchmarks/gpu_mfu.py [--preset seed] [--batch N] [--steps 10] [--compile]

Last line of output: one JSON object with samples_per_s, mfu, peak_mem_gb.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.training.precision import resolve_precision

logger = logging.getLogger("gpu_mfu")
ROOT = Path(__file__).resolve().parents[1]
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s.
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
QUESTIONS_PER_IMAGE = 4
TEXT_LENGTH = 32


def device_peak(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in BF16_PEAKS.items():
            if key in name:
                return peak, f"{name} dense bf16 spec"
        logger.warning("unknown GPU %s: measuring a bf16 matmul peak instead", name)
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start), f"measured {dtype} matmul"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(images: int, image_size: int, vocab: int, device: torch.device) -> dict:
    n = images * QUESTIONS_PER_IMAGE
    return {
        "images": torch.rand(images, 3, image_size, image_size, device=device),
        "image_index": torch.arange(images, device=device).repeat_interleave(QUESTIONS_PER_IMAGE),
        "input_ids": torch.randint(5, vocab, (n, TEXT_LENGTH), device=device),
        "attention_mask": torch.ones(n, TEXT_LENGTH, dtype=torch.long, device=device),
        "labels": torch.randint(0, 13, (n,), device=device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="default: seed on CUDA, cpu on CPU")
    parser.add_argument("--batch", type=int, default=0, help="images per step; 0 = largest that fits (CUDA) / 2 (CPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_precision("auto", device)
    preset = args.preset or ("seed" if device.type == "cuda" else "cpu")
    params = yaml.safe_load((ROOT / "conf/base/parameters_model.yml").read_text())["model"]
    params["preset"] = preset
    config = resolve_model_config(params, vocab_size=30522, max_length=TEXT_LENGTH, num_answers=13)
    model = build_model(ModelConfig.from_dict(config)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    image_size = config["vision"]["image_size"]

    def step(batch: dict, forward: torch.nn.Module = model) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = forward(tasks=["answer"], **inputs)["answer"]
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batch_size = args.batch or 2
    if device.type == "cuda" and not args.batch:  # double until out of memory
        batch_size = 8
        while True:
            try:
                step(make_batch(batch_size * 2, image_size, 30522, device))
                _sync(device)
                batch_size *= 2
                if batch_size >= 4096:
                    break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
        batch_size = max(8, int(batch_size * 0.75) // 8 * 8)  # headroom for fragmentation
    batch = make_batch(batch_size, image_size, 30522, device)
    with FlopCounterMode(display=False) as counter:  # eager: the counter's module hooks would break a compiled graph
        step(batch)
    flops_per_step = counter.get_total_flops()
    forward = torch.compile(model) if args.compile else model
    for _ in range(3):  # warm-up (and compilation)
        step(batch, forward)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch, forward)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak, peak_source = device_peak(device)
    samples_per_s = batch_size * QUESTIONS_PER_IMAGE / seconds
    mfu = flops_per_step / seconds / peak
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident memory (Linux reports KiB)
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    logger.info("%s preset=%s batch=%d images (%d questions) dtype=%s: %.1f samples/s, MFU %.1f%% of %.1f TFLOP/s (%s)",
                device, preset, batch_size, batch_size * QUESTIONS_PER_IMAGE, dtype, samples_per_s,
                100 * mfu, peak / 1e12, peak_source)
    print(json.dumps({  # noqa: T201 - the benchmark's result line
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": preset,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_images": batch_size,
        "samples_per_s": round(samples_per_s, 2),
        "mfu": round(mfu, 4),
        "peak_mem_gb": round(peak_mem, 2),
        "peak_flops": peak,
        "peak_source": peak_source,
        "compiled": args.compile,
    }))


if __name__ == "__main__":
    main()
