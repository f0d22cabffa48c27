"""Controller overhead: training step time with and without the outer loop.

The CPU preset (conf/base/parameters_model.yml) trains on a synthetic easy-VQA-
shaped batch stream through the real `training.loop.train`, once per method:
fixed (no adapter), hypergradient, double_loop. Two figures per method:

- whole (`<method>_ab_fraction`, the goal's figure): the mean time of *every* step
  (the measuring steps and window ends included) with the controller over the same
  without it, paired within a round and rotated (round r starts with the method r),
  then the median over rounds. Pairing takes out the drift between rounds, which on
  a shared machine is several times the effect.
- direct: seconds spent inside the adapter's calls (before_step, scales,
  weight_decay_scales, observe; the held-out batch with --meta-images), per step,
  over the fixed step time. Immune to the load of other processes.

    .venv/bin/python benchmarks/controller_overhead.py [--steps 65] [--rounds 6] [--every 16] [--measure-every 4] [--threads 2] [--meta-images 0]

Figures are logged to stderr; the last line of stdout is one JSON object whose
`overhead_fraction` is the larger whole-step fraction of the two methods (goal
<= 0.02), with each method's per-round fractions and their standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from multimodal_doubleloop.data.batching import EncodedSplit, first_images
from multimodal_doubleloop.data.images import InMemoryImages
from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.controller import ControllerConfig, build_adapter
from multimodal_doubleloop.training.loop import train

logger = logging.getLogger("controller_overhead")
ROOT = Path(__file__).resolve().parents[1]
METHODS = ("fixed", "hypergradient", "double_loop")


class Probe:
    """Forwards to an adapter (or to none, for the fixed baseline), adds up the time
    spent in it, and stamps the end of every optimiser step (`observe`)."""

    def __init__(self, adapter):
        self.adapter, self.seconds, self.stamps = adapter, 0.0, []
        self.held_out_start = None  # the loop scores the held-out batch between these two calls
        self.held_out_passes = 0

    def _call(self, name, *args, default=None):
        if self.adapter is None:
            return default
        start = time.perf_counter()
        out = getattr(self.adapter, name)(*args)
        self.seconds += time.perf_counter() - start
        return out

    def before_step(self, step, optimizer):
        self._call("before_step", step, optimizer)

    def decides_at(self, step):
        return self._call("decides_at", step, default=False)

    def scales(self):
        return self._call("scales", default={})

    def weight_decay_scales(self):
        return self._call("weight_decay_scales", default={})

    def observe(self, step, stats, optimizer):
        self._call("observe", step, stats, optimizer)
        self.stamps.append(time.perf_counter())

    def validation_images(self):
        return self._call("validation_images", default=0)

    def wants_validation(self, step):
        wanted = self._call("wants_validation", step, default=False)
        if wanted:
            self.held_out_start = time.perf_counter()
        return wanted

    def observe_validation(self, loss):
        self.seconds += time.perf_counter() - self.held_out_start
        self.held_out_passes += 1
        self._call("observe_validation", loss)

    def stop_requested(self):
        return self._call("stop_requested", default=False)

    def state_dict(self):
        return self._call("state_dict")

    def load_state_dict(self, state):
        self._call("load_state_dict", state)


def synthetic_split(n_images: int, questions_per_image: int, length: int, vocab: int, answers: int):
    g = torch.Generator().manual_seed(0)
    n = n_images * questions_per_image
    return EncodedSplit(
        image_rows=torch.arange(n_images).repeat_interleave(questions_per_image),
        input_ids=torch.randint(5, vocab, (n, length), generator=g),
        attention_mask=torch.ones(n, length, dtype=torch.long),
        labels=torch.randint(0, answers, (n,), generator=g),
    )


def run(method: str, args, split, images, model_config: dict) -> tuple[float, float, int]:
    """(mean step seconds over every step but the first, adapter seconds per step,
    held-out passes counted as adapter time) of one short training run."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            epochs=1,
            images_per_batch=args.images_per_batch,
            max_steps=args.steps,
            warmup_steps=2,
            checkpoint_every=0,
            resume=False,
            progress_bar=False,
            log_every=1,
            checkpoint_dir=tmp,
            device="cpu",
            controller=ControllerConfig(
                method=method,
                every=args.every,
                measure_every=args.measure_every,
                meta_images=args.meta_images if method == "double_loop" else 0,
            ),
        )
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_dict(model_config))
        probe = Probe(
            build_adapter(cfg.controller, list(model.parameter_groups()), cfg.warmup_steps)
        )
        held_out = first_images(split, args.meta_images) if cfg.controller.meta_images else None
        train(model, split, held_out, images, cfg, {}, TaskSet.answer_only(), probe)
    steps = np.diff(probe.stamps)[1:]  # the first step pays for allocations
    return float(np.mean(steps)), probe.seconds / len(probe.stamps), probe.held_out_passes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=0,
        help="optimiser steps per run (default 4 * every + 1: four window ends, so per-window work is amortised as in training)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds of all methods, order rotated per round")
    parser.add_argument("--every", type=int, default=16, help="training.controller.every")
    parser.add_argument("--measure-every", type=int, default=4, help="training.controller.measure_every")
    parser.add_argument("--images-per-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--meta-images", type=int, default=0, help="double_loop's held-out batch (training.controller.meta_images)"
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or 4 * args.every + 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)

    params = yaml.safe_load((ROOT / "conf/base/parameters_model.yml").read_text())["model"]
    vocab, length, answers, questions_per_image = 120, 12, 13, 10  # easy-VQA's shape
    model_config = resolve_model_config({**params, "preset": "cpu"}, vocab, length, answers)
    size = model_config["vision"]["image_size"]
    n_images = args.images_per_batch * (args.steps + 1)
    pixels = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    images = InMemoryImages(pixels)
    split = synthetic_split(n_images, questions_per_image, length, vocab, answers)

    times = {m: [] for m in METHODS}
    inside = {m: [] for m in METHODS}
    passes = {m: 0 for m in METHODS}
    for r in range(args.rounds):
        for method in METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]:
            step, per_step, held_out = run(method, args, split, images, model_config)
            passes[method] += held_out
            times[method].append(step)
            inside[method].append(per_step)
            logger.info(
                "round %d %-13s step %.4f s, controller %.5f s/step", r, method, step, per_step
            )
    base = statistics.median(times["fixed"])
    result = {
        "preset": "cpu",
        "images_per_batch": args.images_per_batch,
        "every": args.every,
        "steps": args.steps,
        "measure_every": args.measure_every,
        "threads": args.threads,
        "rounds": args.rounds,
        "meta_images": args.meta_images,
        "step_seconds_fixed": base,
    }
    for method in METHODS[1:]:
        paired = [t / f - 1 for t, f in zip(times[method], times["fixed"], strict=True)]
        result[f"{method}_ab_fraction"] = statistics.median(paired)
        result[f"{method}_ab_fraction_rounds"] = [round(x, 4) for x in paired]
        result[f"{method}_ab_fraction_se"] = (
            statistics.stdev(paired) / len(paired) ** 0.5 if len(paired) > 1 else float("nan")
        )
        result[f"{method}_controller_seconds_per_step"] = statistics.median(inside[method])
        result[f"{method}_direct_fraction"] = statistics.median(inside[method]) / base
        result[f"{method}_held_out_passes"] = passes[method]  # over all rounds
    result["overhead_fraction"] = max(result[f"{m}_ab_fraction"] for m in METHODS[1:])
    sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
