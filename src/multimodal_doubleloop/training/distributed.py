"""Multi-process training on torch.distributed: gloo on CPU, NCCL on CUDA.

Two ways in, one training function:
- `spawn(fn, world_size, *args)`: from inside a Kedro node, start `world_size`
  worker processes with torch.multiprocessing (never re-running the pipeline) and
  return rank 0's result;
- `init_from_env()`: under `torchrun` (one or many machines), join the group the
  launcher describes through RANK / WORLD_SIZE / MASTER_ADDR / ... variables.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """This process's place in the group (rank 0 of 1 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Context(dist.get_rank(), dist.get_world_size(), local)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for(ctx: Context, requested: str) -> str:
    """Each rank takes its own GPU; CPU stays CPU."""
    if requested in ("auto", "cuda") and torch.cuda.is_available() and ctx.world_size > 1:
        return f"cuda:{ctx.local_rank}"
    return requested


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_env(backend: str | None = None) -> Context:
    """Join the process group described by torchrun's environment variables."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "RANK/WORLD_SIZE are not set: start this entry point with torchrun, e.g. "
            "`torchrun --standalone --nproc-per-node 2 -m multimodal_doubleloop.commands.torchrun`"
        )
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return context()


def _worker(rank: int, world_size: int, port: int, backend: str, out: str, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def spawn(fn, world_size: int, *args, backend: str | None = None):
    """Run `fn(*args)` in `world_size` fresh processes; return rank 0's result.

    `fn` and `args` must be picklable (a module-level function and plain data)."""
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"training.world_size={world_size} but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.pt")
        logger.info("Spawning %d %s workers", world_size, backend)
        mp.spawn(_worker, args=(world_size, _free_port(), backend, out, fn, args), nprocs=world_size)
        return torch.load(out, weights_only=False)  # written by our own rank 0 just now


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if context().world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_scales(scales: dict[str, float], names: list[str], device: torch.device) -> dict[str, float]:
    """Rank 0's per-group decisions, identical on every rank (`device`: where the
    process group's backend wants tensors, e.g. the GPU for NCCL)."""
    if context().world_size == 1 or not names:
        return scales
    values = torch.tensor([float(scales.get(n, 1.0)) for n in names], dtype=torch.float64, device=device)
    dist.broadcast(values, src=0)
    return dict(zip(names, values.tolist(), strict=True))


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if context().world_size > 1:
        dist.barrier()
