"""Ingest + tokenize at COCO scale: a synthetic captions_train2017.json in the COCO
layout (118,287 images, 5 captions each: 591,435 captions; no image files, so
`verify_images: none`), through the project's own nodes: `ingestion.ingest` (parse,
canonical table, validation split, schema check) then `tokenization.fit_tokenizer` and
`encode_texts`.

The measured step runs in a fresh child process, so `peak_mb` (its peak resident set,
`ru_maxrss`) covers exactly ingest + tokenize, not writing the synthetic file; about
1 GB of it is the imported libraries (torch alone maps ~0.7 GB). `cpu_seconds` and
the load average say how much a busy machine stretched `seconds`.
Goal: <= 60 s and <= 2 GB on 2 cores. The last output line is one JSON object.

    .venv/bin/python benchmarks/ingest_scale.py [--images 118287] [--per-image 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("ingest_scale")

WORDS = (
    "a an the man woman person people child dog cat horse bus train car truck bike plane boat "
    "bird giraffe elephant zebra sheep cow bear kite pizza cake sandwich table chair couch bed "
    "street road field beach water snow grass tree building city kitchen room window plate "
    "red blue green white black yellow large small young old two three several group of on in "
    "with at near next to top front behind under while is are sitting standing riding holding "
    "walking eating playing flying looking down up across along and its their some other"
).split()


def write_annotations(root: Path, images: int, per_image: int, seed: int = 0) -> Path:
    """COCO's captions JSON: images [id, file_name, width, height, ...] and annotations
    [id, image_id, caption], captions of 8-15 words drawn from a small vocabulary."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(600_000, size=images, replace=False)  # sparse ids, like COCO's
    n = images * per_image
    lengths = rng.integers(8, 16, size=n)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), size=int(lengths.sum()))]
    ends = np.cumsum(lengths)
    captions = [" ".join(words[e - k : e]) + "." for e, k in zip(ends, lengths, strict=True)]
    document = {
        "info": {"description": "synthetic COCO captions"},
        "licenses": [],
        "images": [
            {"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 480, "width": 640,
             "date_captured": "", "flickr_url": "", "id": int(i)}
            for i in image_ids
        ],
        "annotations": [
            {"image_id": int(image_ids[k // per_image]), "id": k + 1, "caption": c}
            for k, c in enumerate(captions)
        ],
    }
    path = root / "annotations" / "captions_train2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(document))
    return path


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(root: str, vocab_size: int, max_length: int) -> dict:
    """Ingest and tokenize `root` in this process; seconds per stage and peak RSS."""
    from kedro_datasets.partitions import PartitionedDataset

    from multimodal_doubleloop.io import ImageRootDataset
    from multimodal_doubleloop.models.starting_point import StartingPoint
    from multimodal_doubleloop.pipelines.ingestion.nodes import ingest
    from multimodal_doubleloop.pipelines.tokenization.nodes import encode_texts, fit_tokenizer

    ingestion = {
        "source": "coco_captions",
        "val_fraction": 0.05,
        "in_memory_images": False,
        "verify_images": "none",  # no image files exist: this measures the annotations path
        "coco_captions": {"splits": {"train": "train2017"}},
    }
    tasks = {"active": ["caption"], "definitions": {"caption": {"type": "caption"}}}
    tokenization = {"vocab_size": vocab_size, "min_frequency": 2, "max_length": max_length}
    load = os.getloadavg()[0]
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    peaks = {"imports": _peak_mb()}
    # the raw inputs as the catalog declares them (conf/coco_captions/catalog.yml)
    annotations = PartitionedDataset(
        path=f"{root}/annotations", dataset="json.JSONDataset", filename_suffix=".json"
    ).load()
    samples, quarantine, _ = ingest(annotations, ImageRootDataset(root).load(), ingestion, tasks)
    ingested, cpu_ingested, peaks["ingest"] = time.perf_counter(), _cpu_seconds(), _peak_mb()
    tokenizer = fit_tokenizer(samples, StartingPoint(), tokenization)  # trained, as from a random init
    fitted, cpu_fitted, peaks["fit_tokenizer"] = time.perf_counter(), _cpu_seconds(), _peak_mb()
    encoded = encode_texts(samples, tokenizer, tokenization)
    done, peaks["encode"] = time.perf_counter(), _peak_mb()
    assert len(encoded["input_ids"]) == len(samples) and quarantine.empty
    return {
        "seconds": round(done - start, 2),
        # CPU time of all threads: what the run costs, whatever else the machine runs
        "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
        "load_average_1min": round(load, 2),  # > 2 on 2 cores: other work shares them
        "ingest_seconds": round(ingested - start, 2),
        "fit_tokenizer_seconds": round(fitted - ingested, 2),
        "encode_seconds": round(done - fitted, 2),
        "cpu_seconds_by_stage": {
            "ingest": round(cpu_ingested - cpu_start, 2),
            "fit_tokenizer": round(cpu_fitted - cpu_ingested, 2),
            "encode": round(_cpu_seconds() - cpu_fitted, 2),
        },
        "peak_mb_by_stage": peaks,  # the running maximum after each stage
        "peak_mb": _peak_mb(),
        "captions": len(samples),
        "images": int(samples["image_id"].nunique()),
        "splits": {k: int(v) for k, v in samples["split"].value_counts().items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child: the root to ingest
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.measure:
        result = measure(args.measure, args.vocab_size, args.max_length)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = write_annotations(Path(tmp), args.images, args.per_image)
            logger.info(
                "wrote %s (%.0f MB) in %.1f s", path, path.stat().st_size / 2**20, time.perf_counter() - start
            )
            child = subprocess.run(
                [sys.executable, __file__, "--measure", tmp, "--vocab-size", str(args.vocab_size),
                 "--max-length", str(args.max_length)],
                check=True, capture_output=True, text=True,
            )
            sys.stderr.write(child.stderr[-4000:])
            result = json.loads(child.stdout.strip().splitlines()[-1])
        result["goal"] = {"seconds": 60, "peak_mb": 2048}
    sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
