"""Resume checkpoints: written atomically, loaded without unpickling code; resume.

The one place training writes files itself (mid-run state is not a catalog
artifact). Each training configuration has its own folder,
`<training.checkpoint_dir>/<digest>/` (`run_directory`), so a run with other data or
parameters starts fresh beside the others instead of refusing to start, and a rerun
of the same configuration resumes; only the newest `training.keep_configs` folders
are kept. Each checkpoint is `step_<N>.pt` (tensors, `torch.load(weights_only=True)`)
plus `step_<N>.json` (metadata with the payload's SHA-256), both renamed into place
after an fsync, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .state import TrainState

logger = logging.getLogger(__name__)

# Keys that may differ between a checkpoint and the run resuming it.
RESUMABLE_DIFFERENCES = {
    "training.epochs",
    "training.max_steps",
    "training.progress_bar",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_last",
    "training.keep_configs",
    "training.num_workers",
    "training.resume",
    "training.checkpoint_dir",
    "training.device",
    "training.compile",
    "training.eval_every",
    "training.eval_images",
}


# Keys added after checkpoints existed. At these values (their defaults, which is what
# a run from before had) they are no part of a configuration's identity: its folder
# and the resume check stay what they were.
ADDED_WITH_DEFAULTS = {
    "training.freeze": {},
    "training.layer_decay": 1.0,
    "training.texts_per_image": 0,
    "model.fusion.unpad": "auto",  # the same values, computed without the padding
}


def _at_added_default(path: str, value) -> bool:
    return path in ADDED_WITH_DEFAULTS and value == ADDED_WITH_DEFAULTS[path]


def without_added_defaults(config: dict, prefix: str = "", drop: frozenset = frozenset()) -> dict:
    """`config` less the keys of `ADDED_WITH_DEFAULTS` at those values (and the paths
    in `drop`): what identifies a configuration made before those keys existed."""
    return {
        k: without_added_defaults(v, f"{prefix}{k}.", drop) if isinstance(v, dict) else v
        for k, v in config.items()
        if f"{prefix}{k}" not in drop and not _at_added_default(f"{prefix}{k}", v)
    }


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


# --- a run's whole state: model, optimiser, scaler, adapter, tasks, RNG, TrainState ---


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        # as tensors and plain types, so checkpoints load with weights_only=True
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_rng_state() -> tuple:
    _, key, pos, has_gauss, cached = np.random.get_state()
    return torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = set(saved) | set(current)
    diffs = []
    for key in sorted(keys):
        path = f"{prefix}{key}"
        a, b = saved.get(key, ADDED_WITH_DEFAULTS.get(path)), current.get(key, ADDED_WITH_DEFAULTS.get(path))
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, path + ".")
        elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
            diffs.append(path)
    return diffs


def config_digest(run_config: dict) -> str:
    """A run configuration's identity: everything but the keys a resume may change."""
    identity = without_added_defaults(run_config, drop=frozenset(RESUMABLE_DIFFERENCES))
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_directory(root: str | Path, run_config: dict) -> Path:
    """`root/<config digest>`: the checkpoints of this configuration."""
    return Path(root) / config_digest(run_config)


def prune_configurations(root: str | Path, keep: int, current: Path) -> None:
    """Delete all but the `keep` most recently written configuration folders under
    `root` (never `current`)."""
    root = Path(root)
    folders = [p for p in root.iterdir() if p.is_dir() and list_checkpoints(p)] if root.is_dir() else []
    folders.sort(key=lambda p: max(f.stat().st_mtime for f in p.glob("*.json")), reverse=True)
    for old in [p for p in folders if p != current][max(keep - 1, 0):]:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
        logger.info("Pruned the checkpoints of an older configuration: %s", old)


def describe_start(root: str | Path, directory: Path) -> None:
    """Log why a run starts fresh: no checkpoint of its configuration yet."""
    others = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and p != directory and list_checkpoints(p)) \
        if Path(root).is_dir() else []
    logger.info(
        "No checkpoint of this configuration (%s) yet: starting fresh%s", directory.name,
        f"; {len(others)} other configuration(s) in {root} are left as they are: {others}" if others else "",
    )


def save_run(
    directory, run_config: dict, state: TrainState, parts: dict, keep_last: int, best: bool = False,
    labels: dict | None = None,
) -> None:
    """Checkpoint a run at `state.step`: `parts` maps names (model, optimizer, scaler,
    adapter, tasks) to objects with a `state_dict` (or None); the RNG state and
    `run_config` go with them, and `labels` (class names per head) so that a run
    starting from this checkpoint (`model.init_from=.../step_N.pt`) keeps its heads."""
    payload = {name: None if obj is None else obj.state_dict() for name, obj in parts.items()}
    payload["rng"] = _rng_state()
    meta = {"config": run_config, "state": asdict(state), **({"labels": labels} if labels else {})}
    save_checkpoint(directory, state.step, payload, meta, keep_last, best=best)


def resume_run(directory, run_config: dict, parts: dict) -> TrainState | None:
    """Restore `parts` (see `save_run`) and the RNG from the newest checkpoint in
    `directory` and return its `TrainState`; None when there is none. A checkpoint made
    with a different configuration is refused, naming the differing keys."""
    found = load_latest(directory)
    if found is None:
        return None
    payload, meta = found
    diffs = [d for d in _config_diff(meta["config"], run_config) if d not in RESUMABLE_DIFFERENCES]
    if diffs:
        raise CheckpointError(
            f"checkpoint step {meta['step']} in {directory} was made with a "
            f"different configuration (differing keys: {diffs}); delete the directory "
            "or set training.resume: false to start over"
        )
    for name, obj in parts.items():
        if obj is not None and payload.get(name) is not None:
            obj.load_state_dict(payload[name])
    _restore_rng(payload["rng"])
    state = TrainState(**meta["state"])
    logger.info("Resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch)
    return state
