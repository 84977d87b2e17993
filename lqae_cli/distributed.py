"""Several processes with `torchrun`, for training and for batch conversion: plain torch.distributed.

Without torchrun (no RANK in the environment, or a world of one) everything here is a no-op: one
process, rank 0. Under torchrun each rank takes its own GPU (LOCAL_RANK) with nccl, or CPU threads
with gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Ranks:
    """Where this process stands: its rank, the world size, and its device."""
    rank: int
    world: int
    distributed: bool
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_ranks(device_name: str | None) -> Ranks:
    """One process, or a torchrun rank: its own GPU (LOCAL_RANK) with nccl, or gloo on CPU."""
    from .tokenizer import resolve_device

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    distributed = "RANK" in os.environ and world > 1
    device = resolve_device(device_name)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, distributed, device)


def shard_of(items: list, ranks: Ranks) -> list:
    """This rank's part of a list that every rank sorted the same way: every world-th item from its rank on."""
    return items[ranks.rank::ranks.world] if ranks.distributed else items


def sum_over_ranks(values: list[int], ranks: Ranks) -> list[int]:
    """The element-wise sum of `values` over all ranks (a gloo/nccl all-reduce); as is for one process."""
    if not ranks.distributed:
        return values
    t = torch.tensor(values, dtype=torch.long, device=ranks.device)
    dist.all_reduce(t)
    return t.tolist()


def shutdown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
