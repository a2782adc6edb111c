"""One rank of the distributed-training test (``test_train_distributed.py``), started by torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 test/ddp_worker.py OUT [DEVICE]

Three runs of 4 steps; after the first two each rank writes what it holds (weights and Adam
moments) to OUT/<run>/rank<r>.pt:
  straight  the Trainer's loop;
  resumed   2 steps, a checkpoint, a new Trainer resuming it to step 4;
  cli       ``m4sam train`` itself (rank 0 writes checkpoint, log and adapter).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from m4sam_ros import cli
from m4sam_ros.learn.distributed import world_from_environment
from m4sam_ros.learn.train import TrainConfig, Trainer

SETTINGS = {"image_size": 64, "steps": 4, "warmup_steps": 1, "lr": 1e-3, "clip_length": 2, "synthetic_videos": 2,
            "synthetic_frames": 5, "synthetic_height": 32, "synthetic_width": 40, "progress": False,
            "checkpoint_every": 0, "threads": 1, "batch_size": 1}


def config(out_dir: Path, device: str = "cpu", **overrides) -> TrainConfig:
    """The runs' settings; ``accumulate`` 1 per rank (the one-process twin has accumulate = world size)."""
    return TrainConfig(**{**SETTINGS, "out_dir": str(out_dir), "device": device, **overrides})


def trainer_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Trainable tensors and Adam moments, on the CPU."""
    tensors = {f"param/{n}": p.detach().cpu().clone() for n, p in trainer.named_trainable.items()}
    for i, state in enumerate(trainer.optimizer.state_dict()["state"].values()):
        tensors.update({f"adam/{i}/{k}": v.detach().cpu().clone() for k, v in state.items()})
    return tensors


def main(out: Path, device: str) -> None:
    rank = world_from_environment().rank
    straight = Trainer(config(out / "straight", device))
    straight.run()
    torch.save(trainer_state(straight), out / "straight" / f"rank{rank}.pt")

    first = Trainer(config(out / "resumed", device))
    for _ in range(2):
        first.train_step()
    checkpoint = first.save_checkpoint()
    resumed = Trainer(config(out / "resumed", device, resume=str(checkpoint)))
    resumed.run()
    torch.save(trainer_state(resumed), out / "resumed" / f"rank{rank}.pt")

    # last: the verb leaves the process group when it is done (a process group is never re-joined)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items() if not isinstance(v, bool)]
    assert cli.main(["train", *flags, "--no-progress", "--out-dir", str(out / "cli"), "--device", device]) == 0


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cpu")
