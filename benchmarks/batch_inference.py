"""Batch scoring at scale: `kedro run --pipeline=inference` over request tables of
growing length, reading and writing them a batch at a time.

A copy of the project trains a cpu-preset model for two steps (`serving.train_copy`:
near-random weights, all speed needs), then for each `--rows` (default 1000 and
10000) the benchmark writes a request table of that many easy-VQA test questions
(base64 PNG + text, images cycling over the test split) where the catalog's
`batch_requests` reads it, and runs `kedro run --pipeline=inference` in a child
process. Per size: wall time of the command, the node's scoring rate (its log
line), and the child's peak RSS (`os.wait4`). Flat memory means the peak barely
moves from 1k to 10k rows.

    .venv/bin/python benchmarks/batch_inference.py [--rows 1000,10000] [--batch-rows 256]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, test_rows, train_copy  # noqa: E402

logger = logging.getLogger("batch_inference")


def score(project: Path, rows: int, batch_rows: int, pool: list[tuple[str, str]]) -> dict:
    table = pd.DataFrame([pool[i % len(pool)] for i in range(rows)], columns=["image", "text"])
    table.to_parquet(project / "data/05_model_input/inference_requests.parquet", row_group_size=batch_rows)
    command = [str(BIN / "kedro"), "run", "--pipeline", "inference", "--params", "inference.top_k=3"]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    local = (  # the batch size, in the copy's local environment
        "batch_requests:\n  type: multimodal_doubleloop.io.ParquetBatchesDataset\n"
        f"  filepath: data/05_model_input/inference_requests.parquet\n  batch_rows: {batch_rows}\n"
    )
    (project / "conf/local/catalog.yml").write_text(local)
    start = time.perf_counter()
    with open(project / f"score_{rows}.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = (project / f"score_{rows}.log").read_text()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"kedro run --pipeline=inference failed:\n{text[-3000:]}")
    found = re.search(r"Scored (\d+) requests in ([\d.]+) s", " ".join(text.split()))
    scored, seconds = (int(found.group(1)), float(found.group(2))) if found else (0, float("nan"))
    out = pd.read_parquet(project / "data/07_model_output/batch_predictions")
    assert scored == rows == len(out), (scored, rows, len(out))
    result = {"wall_s": round(wall, 1), "scoring_rows_per_s": round(rows / seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # fmt: skip
    logger.info("%d rows: %s", rows, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,10000", help="request table sizes, comma-separated")
    parser.add_argument("--batch-rows", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    sizes = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="batch_inference_") as tmp:
        project = train_copy("cpu", Path(tmp))
        pool = test_rows(1000)
        figures = {str(n): score(project, n, args.batch_rows, pool) for n in sizes}
    small, large = figures[str(min(sizes))], figures[str(max(sizes))]
    print(json.dumps({  # noqa: T201 - the benchmark's result line
        "rows": figures,
        "batch_rows": args.batch_rows,
        "peak_rss_ratio_largest_over_smallest": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "rows_ratio": max(sizes) / min(sizes),
    }))


if __name__ == "__main__":
    main()
