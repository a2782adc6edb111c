"""Training across GPUs and machines: the process group ``torchrun`` describes, and the three
collective steps training needs.

    torchrun --nproc-per-node 4 -m m4sam_ros.cli train --config train.yaml        # one machine
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST \\
             --master-port 29500 -m m4sam_ros.cli train --config train.yaml        # on each machine

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them training is one process, as before. The backend is NCCL on CUDA and gloo on
the CPU. Each rank runs its own micro-batches of the same global step (which clips and
which dropout draws is decided by ``Trainer``: a pure function of seed and micro-batch
index), the ranks' gradients are averaged once per optimizer step (``average_gradients``),
and every rank takes the same optimizer step, so the weights stay identical without ever
being sent. Why an explicit all-reduce and not ``DistributedDataParallel``: a clip runs the
model through several methods (encode, memory attention, decoder, memory encoder), not
through one ``forward``, which is where DDP hooks in; one flat all-reduce per optimizer
step is also fewer messages than DDP's per-micro-batch ones under gradient accumulation.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, the adapter and the evaluation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process: cuda:LOCAL_RANK when training on CUDA across processes."""
        if self.distributed and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def in_turn(self, fn: Callable[[], T]) -> T:
        """``fn`` on every rank, first on rank 0, then on each other machine's local rank 0, then
        on the rest: data generated once (marker files) is written by one process per file
        system, whether ``out_dir`` is shared between machines or not, and read by the others."""
        turn = 0 if self.rank == 0 else (1 if self.local_rank == 0 else 2)
        result = None
        for phase in range(3):
            if phase == turn:
                result = fn()
            self.barrier()
        return result

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Every rank's gradients become the mean over ranks, in one flat all-reduce.

        A parameter no rank gave a gradient keeps ``None`` (so the optimizer skips it, as one
        process would); one that some rank did not reach counts zeros there."""
        if not self.distributed:
            return
        reached = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32,
                               device=parameters[0].device)
        dist.all_reduce(reached, op=dist.ReduceOp.MAX)
        used = [p for p, flag in zip(parameters, reached.tolist()) if flag]
        if not used:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
        flat = torch.cat([g.reshape(-1) for g in grads]).div_(self.world_size)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for parameter in used:
            count = parameter.numel()
            parameter.grad = flat[offset:offset + count].view_as(parameter)
            offset += count

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The ranks' mean of each value (losses for the log)."""
        if not self.distributed:
            return values
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {n: float(v) / self.world_size for n, v in zip(names, tensor.tolist())}

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's values in every rank's parameters (identical starting weights, whatever each
        machine loaded)."""
        if self.distributed:
            with torch.no_grad():
                for parameter in parameters:
                    dist.broadcast(parameter.data, src=0)


def world_from_environment(environ: dict[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in the environment; one process without it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return World()
    missing = [k for k in ENV_KEYS if k not in environ]
    if missing:
        raise ValueError(f"distributed training needs {', '.join(ENV_KEYS)} in the environment (torchrun sets them); "
                         f"missing {', '.join(missing)}")
    world = World(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"]))
    if not 0 <= world.rank < world.world_size:
        raise ValueError(f"RANK {world.rank} is not in [0, WORLD_SIZE {world.world_size})")
    return world


def join(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU), once per process."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=world.rank, world_size=world.world_size,
                            **({"device_id": device} if device.type == "cuda" else {}))


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
