"""Faults: SIGKILL mid-epoch, SIGKILL mid-checkpoint-write, corrupted checkpoints,
non-finite losses. Each costs at most the work since the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from multimodal_doubleloop.training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

SCRIPT = Path(__file__).with_name("train_script.py")
ENV = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}  # for `from conftest import ...`


def _start(checkpoint_dir: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(checkpoint_dir), str(output), *extra],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict]:
    """An uninterrupted run: final weights and history."""
    tmp = tmp_path_factory.mktemp("reference")
    _finish(_start(tmp / "ck", tmp / "out.pt"))
    return torch.load(tmp / "out.pt", weights_only=True)["state_dict"], json.loads((tmp / "out.pt.json").read_text())


def _assert_same_run(tmp: Path, reference) -> None:
    weights, summary = reference
    resumed = torch.load(tmp / "out.pt", weights_only=True)["state_dict"]
    got = json.loads((tmp / "out.pt.json").read_text())
    assert got["step"] == summary["step"]
    for key in ("train_loss", "train_accuracy"):
        assert [h[key] for h in got["history"]] == [h[key] for h in summary["history"]]
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed[name]), name  # bit-identical on CPU


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(tmp_path, reference):
    proc = _start(tmp_path / "ck", tmp_path / "out.pt")
    # kill once the 2nd checkpoint (step 4, mid first epoch) is complete
    _wait_for(lambda: bool(list((tmp_path / "ck").glob("*/step_00000004.json"))))  # ck/<configuration>/
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.pt").exists()
    _finish(_start(tmp_path / "ck", tmp_path / "out.pt"))
    _assert_same_run(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path, reference):
    ck = tmp_path / "ck"
    proc = _start(ck, tmp_path / "out.pt", "6")  # fsync of step 6's checkpoint hangs
    _wait_for(lambda: bool(list(ck.glob("*/.step_00000006.pt.tmp"))))
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = [p for p in ck.iterdir() if p.is_dir()]  # ck/<configuration digest>/
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000004.pt"
    payload, meta = load_latest(run)
    assert meta["step"] == 4
    _finish(_start(ck, tmp_path / "out.pt"))
    _assert_same_run(tmp_path, reference)


def _two_checkpoints(directory: Path) -> list[Path]:
    for step in (1, 2):
        save_checkpoint(directory, step, {"w": torch.full((64,), float(step))}, {"config": {}}, keep_last=5)
    return list_checkpoints(directory)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_checkpoint_is_detected_and_previous_used(tmp_path, damage, caplog):
    first, second = _two_checkpoints(tmp_path)
    data = bytearray(second.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(second)
    payload, meta = load_latest(tmp_path)
    assert meta["step"] == 1 and torch.equal(payload["w"], torch.full((64,), 1.0))
    assert "falling back to the previous checkpoint" in caplog.text


def test_incomplete_checkpoint_without_metadata_is_ignored(tmp_path):
    first, second = _two_checkpoints(tmp_path)
    second.with_suffix(".json").unlink()  # killed between payload and metadata
    assert list_checkpoints(tmp_path) == [first]


def test_keep_last_prunes_old_checkpoints(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]


def test_best_checkpoint_survives_pruning(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {}, keep_last=1, best=True)
    for step in (2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt"]
    payload, meta = load_checkpoint(tmp_path / "best.pt")
    assert meta["step"] == 1 and torch.equal(payload["w"], torch.ones(1))
