"""torchrun / DistributedDataParallel set-up: NCCL on CUDA, gloo on CPU, rank-0 helpers, metric reduction.

Launch (one machine):    torchrun --standalone --nproc_per_node=N -m spikedriven train ...
Launch (many machines):  torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d \\
                             --rdzv_endpoint=HOST:29500 --rdzv_id=JOB -m spikedriven train ...
Distributed iff ``WORLD_SIZE > 1`` in the environment (as the official train.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "all_reduce_sum", "broadcast_object", "barrier"]


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(spec: str, local_rank: int) -> torch.device:
    if spec in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    d = torch.device(spec)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return d


def init_distributed(device: str = "auto", backend: str = "auto") -> DistEnv:
    """Initialise the process group from torchrun's environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, None)
    if backend in ("", "auto", None):
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a list of floats over ranks (float64, exact for counts)."""
    if not env.distributed:
        return list(values)
    dev = env.device if env.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast_object(obj, env: DistEnv):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
