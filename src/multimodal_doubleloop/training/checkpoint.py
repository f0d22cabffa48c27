"""Resume checkpoints: written atomically, loaded without unpickling code.

The one place training writes files itself (mid-run state is not a catalog
artifact). Each checkpoint is `step_<N>.pt` (tensors, `torch.load(weights_only=True)`)
plus `step_<N>.json` (metadata with the payload's SHA-256), both renamed into place
after an fsync, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupted or from another configuration."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(
    directory: str | Path, step: int, payload: dict, meta: dict, keep_last: int, best: bool = False
) -> Path:
    """Write `payload` (tensors and plain containers) and `meta` (JSON) for `step`;
    with `best`, also (atomically) as `best.pt`/`best.json`, which pruning keeps."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path = directory / f"step_{step:08d}.pt"
    _atomic_write(path, data)
    meta = {**meta, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # The JSON lands last: a checkpoint without its JSON is incomplete and ignored.
    _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    if best:
        _atomic_write(directory / "best.pt", data)
        _atomic_write(directory / "best.json", json.dumps(meta, indent=1).encode())
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (payload + metadata), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step_*.pt") if p.with_suffix(".json").exists())


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Load one checkpoint, verifying its checksum; raise `CheckpointError` if bad."""
    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {path.with_suffix('.json')} unreadable: {exc}") from exc
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is corrupted: SHA-256 {digest[:12]}... does not match "
            f"the recorded {str(meta.get('sha256'))[:12]}... ({len(data)} of {meta.get('bytes')} bytes)"
        )
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return payload, meta


def load_latest(directory: str | Path) -> tuple[dict, dict] | None:
    """Newest checkpoint that verifies; corrupted ones are logged and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            logger.error("%s; falling back to the previous checkpoint", exc)
    return None
