"""Serving latency of the MLflow model, through a real `mlflow models serve` on 127.0.0.1.

For each preset, a copy of the project trains for two steps on eight images per
split (`kedro run --pipeline=train --params model.preset=<preset>,training.max_steps=2,...`:
near-random weights, which is all speed needs; the run registers the model as
`multimodal_doubleloop@champion` in the copy's own MLflow store), then the benchmark
serves `models:/multimodal_doubleloop@champion` and measures:

- model load time: from starting the server to its first successful `/ping`;
- single-row latency, p50 and p99, over `--requests` sequential requests (one easy-VQA
  test image and question each, images cycling over the test split);
- rows/s at batch `--batch`, over `--batches` requests.

The request loop is bounded and the server is stopped (its process group) whatever
happens. With `--model-uri` the benchmark serves that model from the current
project's store instead of training one (one entry, `given`).

    .venv/bin/python benchmarks/serving.py [--presets cpu,seed] [--requests 200] [--batch 64] [--batches 10]

Progress goes to stderr; the last line of stdout is one JSON object: per preset the
figures, and `seed_over_cpu_p50`, the goal being cpu p50 <= 20 ms and that ratio <= 10.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHAMPION = "models:/multimodal_doubleloop@champion"
logger = logging.getLogger("serving")


def train_copy(preset: str, workdir: Path) -> Path:
    """A project copy with a two-step model of `preset` registered as champion."""
    path = workdir / preset
    shutil.copytree(PROJECT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", path / "pyproject.toml")
    (path / "src").mkdir()
    (path / "data").mkdir()
    params = f"model.preset={preset},training.max_steps=2,training.epochs=1,ingestion.max_images_per_split=8"
    command = [str(BIN / "kedro"), "run", "--pipeline", "train", "--params", params]
    logger.info("%s: %s", preset, " ".join(command))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=path, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"training the {preset} model failed:\n{result.stderr[-3000:]}")
    logger.info("%s: trained and registered in %.0f s", preset, time.perf_counter() - start)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(rows: list[tuple[str, str]]) -> dict:
    return {"dataframe_split": {"columns": ["image", "text"], "data": [list(r) for r in rows]}}


def test_rows(n: int) -> list[tuple[str, str]]:
    """`n` (base64 PNG, question) pairs from easy-VQA's test split."""
    import easy_vqa

    texts, _answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows = []
    for i in range(n):
        with open(paths[image_ids[i]], "rb") as f:
            rows.append((base64.b64encode(f.read()).decode(), texts[i]))
    return rows


def measure(project: Path, model_uri: str, args) -> dict:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    log = open(project / "serve.log", "wb")  # noqa: SIM115 (closed below)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - start > args.load_timeout:
                raise RuntimeError(f"the server did not come up:\n{(project / 'serve.log').read_text()[-3000:]}")
            try:
                if session.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        load_s = time.perf_counter() - start
        rows = test_rows(max(args.requests, args.batch))
        for row in rows[:5]:  # warm-up
            session.post(f"{url}/invocations", json=_payload([row]), timeout=60).raise_for_status()
        latencies = []
        for i in range(args.requests):
            t = time.perf_counter()
            response = session.post(f"{url}/invocations", json=_payload([rows[i % len(rows)]]), timeout=60)
            latencies.append(time.perf_counter() - t)
            response.raise_for_status()
        batch = _payload(rows[: args.batch])
        t = time.perf_counter()
        for _ in range(args.batches):
            session.post(f"{url}/invocations", json=batch, timeout=300).raise_for_status()
        batch_s = time.perf_counter() - t
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    latencies.sort()
    return {
        "model_load_s": round(load_s, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "rows_per_s_batch": round(args.batch * args.batches / batch_s, 1),
        "requests": args.requests,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="cpu,seed")
    parser.add_argument("--model-uri", default=None, help="serve this model from the project's store instead")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--load-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    results = {}
    if args.model_uri:
        results["given"] = measure(PROJECT, args.model_uri, args)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            for preset in args.presets.split(","):
                results[preset] = measure(train_copy(preset, Path(workdir)), CHAMPION, args)
                logger.info("%s: %s", preset, results[preset])
    if "cpu" in results and "seed" in results:
        results["seed_over_cpu_p50"] = round(results["seed"]["p50_ms"] / results["cpu"]["p50_ms"], 2)
    print(json.dumps(results))  # noqa: T201 - the benchmark's result line


if __name__ == "__main__":
    main()
