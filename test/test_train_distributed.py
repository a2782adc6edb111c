"""Training across processes: two real gloo ranks under torchrun against one process with the
same global batch.

Two ranks with accumulate 1 run the micro-batches one process runs with accumulate 2: the
same clips and the same dropout draws (the torch RNG is seeded per micro-batch, whichever
process runs it). Each rank's gradient is its micro-batch's; their mean, g0/2 + g1/2, is
what the one process accumulates (halving is exact in floats, a sum of two is order-free),
so weights and Adam moments are compared bit for bit, on both ranks, for ``m4sam train``
itself under torchrun, for the Trainer's loop and for a distributed resume.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m4sam_ros.learn.distributed import World, world_from_environment
from m4sam_ros.learn.train import Trainer

from ddp_worker import config, trainer_state

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(out: Path, device: str, timeout: float) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(WORKER), str(out), device], env=env, cwd=out, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def _check_against_one_process(out: Path, device: str) -> None:
    reference = Trainer(config(out / "one_process", device, accumulate=2))
    reference.run()
    want = trainer_state(reference)
    assert len(want) > 10
    for run in ("straight", "resumed"):
        for rank in (0, 1):
            got = torch.load(out / run / f"rank{rank}.pt", weights_only=True)
            assert got.keys() == want.keys()
            different = [k for k in want if not torch.equal(got[k], want[k])]
            assert not different, f"{run} rank {rank} differs from one process: {different[:5]}"
    cli_checkpoint = torch.load(out / "cli" / "checkpoint.pt", weights_only=True)
    assert cli_checkpoint["step"] == 4 and cli_checkpoint["world_size"] == 2
    assert cli_checkpoint["micro_batches_per_step"] == 2
    for name, tensor in cli_checkpoint["trainable"].items():
        assert torch.equal(tensor, want[f"param/{name}"]), name
    initial = Trainer(config(out / "init", device)).named_trainable
    assert any(not torch.equal(want[f"param/{n}"], p.detach().cpu()) for n, p in initial.items()), "nothing trained"


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    _torchrun(tmp_path, "cpu", timeout=900)
    _check_against_one_process(tmp_path, "cpu")
    for run in ("cli", "straight", "resumed"):  # rank 0 alone wrote the run's files
        log = (tmp_path / run / "train_log.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in log] == ["step", *(["3", "4"] if run == "resumed" else ["1", "2", "3", "4"])]
        assert (tmp_path / run / "adapter.pt").is_file() and (tmp_path / run / "loss_curve.png").is_file()
    assert not list(tmp_path.glob("*/*.tmp"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL: one GPU per rank)")
def test_two_nccl_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    _torchrun(tmp_path, "cuda", timeout=600)
    _check_against_one_process(tmp_path, "cuda")


def test_world_from_torchrun_environment():
    assert world_from_environment({}) == World(0, 1, 0)
    environ = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29500"}
    world = world_from_environment(environ)
    assert world == World(3, 4, 1) and world.distributed and not world.is_main
    assert world.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert world.device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="missing MASTER_ADDR"):
        world_from_environment({k: v for k, v in environ.items() if k != "MASTER_ADDR"})
    with pytest.raises(ValueError, match="RANK 4 is not in"):
        world_from_environment({**environ, "RANK": "4"})
    one = World()
    assert one.in_turn(lambda: 7) == 7 and one.broadcast("x") == "x" and one.mean({"a": 1.0}, torch.device("cpu")) == {"a": 1.0}


def test_resume_refuses_another_global_batch(tmp_path):
    """A checkpoint of 2 micro-batches per step cannot resume with 1 (accumulate x world size)."""
    first = Trainer(config(tmp_path, accumulate=2, steps=2))
    first.train_step()
    checkpoint = first.save_checkpoint()
    with pytest.raises(ValueError, match="2 micro-batches per step .* this run 1"):
        Trainer(config(tmp_path, accumulate=1, steps=2, resume=str(checkpoint))).run()
