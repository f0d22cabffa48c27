"""The benchmarks run as a user runs them and end with their JSON figures line
(short settings here; the figures themselves belong in benchmarks, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_mfu_runs_on_cpu():
    figures = run_benchmark("gpu_mfu.py", "--steps", "1", "--batch", "1")
    assert figures["device"] == "cpu" and figures["samples_per_s"] > 0
    assert 0 < figures["mfu"] < 1 and figures["peak_mem_gb"] > 0


@pytest.mark.slow
def test_train_throughput_reports_both_batchings():
    figures = run_benchmark(
        "train_throughput.py", "--steps", "2", "--warmup", "1", "--images-per-batch", "4", "--rounds", "2"
    )
    assert figures["image_major_qps"] > 0 and figures["per_question_qps"] > 0
    assert len(figures["speedup_rounds"]) == 2 == len(figures["matmul_peak_trials"])
    assert figures["speedup"] == pytest.approx(sum(figures["speedup_rounds"]) / 2, rel=0.01)  # the median of two
    assert figures["matmul_peak_gflops"] == max(figures["matmul_peak_trials"])
    assert 0 < figures["mfu"] < 1


@pytest.mark.slow
def test_controller_overhead_counts_the_held_out_batch():
    """With a held-out batch the double loop's direct time includes its forward pass
    (counted, not timed: timings belong to the benchmark's figures, not to a test)."""
    figures = run_benchmark(
        "controller_overhead.py", "--steps", "8", "--rounds", "1", "--every", "4", "--measure-every", "2",
        "--images-per-batch", "4", "--meta-images", "4",
    )
    assert figures["meta_images"] == 4 and figures["step_seconds_fixed"] > 0
    assert figures["double_loop_direct_fraction"] > 0 and figures["hypergradient_direct_fraction"] > 0
    # one window end inside 8 steps of 4 (step 4): one held-out pass, and none for HD
    assert figures["double_loop_held_out_passes"] == 1 and figures["hypergradient_held_out_passes"] == 0
    # the goal's figure is the whole step: with against without, paired within the round
    assert figures["overhead_fraction"] == max(figures["double_loop_ab_fraction"], figures["hypergradient_ab_fraction"])
    assert len(figures["double_loop_ab_fraction_rounds"]) == 1


def test_ingest_scale_runs_small():
    figures = run_benchmark("ingest_scale.py", "--images", "200", "--per-image", "5")
    assert figures["captions"] == 1000 and figures["images"] == 200
    assert sum(figures["splits"].values()) == 1000 and figures["peak_mb"] > 0


def test_peer_towers_runs_one_pair_per_tower():
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    figures = run_benchmark("peer_towers.py", "--sizes", "cpu", "--min-iters", "1", "--max-iters", "1", "--budget", "0")
    assert [r["size"] for r in figures["vision"]] == ["cpu"] == [r["size"] for r in figures["text"]]
    assert figures["vision_vs_timm"] == figures["vision"][0]["ratio"] > 0
    assert figures["text_vs_hf"] == figures["text"][0]["ratio"] > 0
