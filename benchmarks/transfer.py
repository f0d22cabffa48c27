"""Does a previous run help? Pretrain contrastively, fine-tune a classifier from it
(`model.init_from`), against the same fine-tuning from scratch, over seeds.

1. Pretrain: `kedro run --pipeline=train --params tasks.active=retrieval` on easy-VQA
   (image <-> "a blue circle" captions), `--pretrain-epochs` epochs.
2. Fine-tune: easy-VQA's images rewritten as an ImageFolder of shapes
   with a random `--fraction` of the training images (every shape in proportion) and
   all 1,000 test images,
   `tasks.active=answer` (image -> shape), `--epochs` epochs, each seed twice: from
   scratch, and with `model.init_from=trained_model@<the pretrain's version>` (towers,
   fusion and tokenizer handed on; the classifier head starts at init).

Same budget, same seeds, same data for both arms; only the starting weights differ.
Reported per run: test accuracy, and the first step whose epoch-end validation
accuracy reaches `--target` (censored at the budget: null).

    .venv/bin/python benchmarks/transfer.py [--fraction 0.1] [--epochs 4] [--pretrain-epochs 2] [--seeds 0,1,2]

What it cannot tell: the pretraining saw the fine-tuning images too (easy-VQA's training
images, with their colour and shape in the captions), so this measures how much a
contrastive start helps a small labelled slice, not transfer to unseen images.

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from own_data import RAW, _copy, easy_vqa_table

PROJECT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("transfer")


def kedro_run(env: str | None, params: list[str]) -> tuple[dict, list[dict], float]:
    """One `kedro run --pipeline=train`; its test metrics, epoch history and wall seconds."""
    command = [str(Path(sys.executable).parent / "kedro"), "run", "--pipeline=train",
               *(["--env", env] if env else []), "--params", ",".join(params)]
    logger.info("%s", " ".join(command[1:]))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True,
                            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"})
    if result.returncode:
        raise RuntimeError(f"run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    reporting = PROJECT / "data/08_reporting"
    return (json.loads((reporting / "metrics.json").read_text()),
            json.loads((reporting / "training_history.json").read_text()), round(time.perf_counter() - start, 1))


def write_slice(table, root: str, fraction: float, seed: int = 0) -> dict:
    """An ImageFolder of shapes: a random `fraction` of easy-VQA's training images
    (every shape in proportion) as train/, all its test images as val/ (the test split)."""
    out = RAW / "image_folder"
    if out.exists():
        shutil.rmtree(out)
    images = table[table["shape"] != ""].drop_duplicates("image_id")
    train = images[images["split"] == "train"]
    keep = np.random.default_rng(seed).random(len(train)) < fraction
    chosen = [train[keep], images[images["split"] == "test"]]
    for part, folder in zip(chosen, ("train", "val"), strict=True):
        for rel, shape in zip(part["image_path"], part["shape"], strict=True):
            _copy(root, rel, out / folder / shape / rel.replace("/", "_"))
    return {"train_images": int(keep.sum()), "test_images": len(chosen[1])}


def newest_model_version() -> str:
    return sorted(p.name for p in (PROJECT / "data/06_models/model.pt").iterdir())[-1]


def steps_to(history: list[dict], target: float) -> int | None:
    """The step at the end of the first epoch whose validation accuracy reaches `target`."""
    return next((int(row["step"]) for row in history if row.get("val_accuracy", 0) >= target), None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of easy-VQA's training images to fine-tune on")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (both arms)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--pretrained", default="", help="a trained_model version to start from (skips pretraining)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy for time to target")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="training images held out to validate on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    pre_metrics, pre_seconds, version = {}, 0.0, args.pretrained
    if not version:
        pre_metrics, _, pre_seconds = kedro_run(None, ["tasks.active=retrieval", f"training.epochs={args.pretrain_epochs}"])
        version = newest_model_version()
    logger.info("pretrained trained_model@%s: %s", version, pre_metrics)
    table, root = easy_vqa_table()
    data = write_slice(table, root, args.fraction)
    logger.info("fine-tuning data: %s", data)
    common = ["tasks.active=answer", f"training.epochs={args.epochs}", f"ingestion.val_fraction={args.val_fraction}"]
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm, extra in (("scratch", []), ("init_from", [f"model.init_from=trained_model@{version}"])):
            metrics, history, seconds = kedro_run("image_folder", [*common, f"training.seed={seed}", *extra])
            runs.append({"arm": arm, "seed": seed, "test_accuracy": metrics["test_accuracy"], "seconds": seconds,
                         "history": [{k: r.get(k) for k in ("step", "val_accuracy")} for r in history],
                         "steps_to_target": steps_to(history, args.target)})
            logger.info("%s seed %d: test accuracy %.4f", arm, seed, metrics["test_accuracy"])
    summary = {}
    for arm in ("scratch", "init_from"):
        accs = [r["test_accuracy"] for r in runs if r["arm"] == arm]
        summary[arm] = {"mean_test_accuracy": statistics.mean(accs),
                        "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "steps_to_target": [r["steps_to_target"] for r in runs if r["arm"] == arm]}
    print(json.dumps({"pretrain": {"version": version, "metrics": pre_metrics, "seconds": pre_seconds},  # noqa: T201
                      "data": data, "target": args.target, "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
