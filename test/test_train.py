"""Training: exact resume, train/test preprocessing parity, --train-all weights, config, and that it learns."""
import argparse
import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from m4sam_ros.depth import DepthConfig
from m4sam_ros.learn import train as train_module
from m4sam_ros.learn.batching import collate_clips
from m4sam_ros.learn.datasets import load_frame, open_dataset
from m4sam_ros.learn.evaluate import evaluate_model
from m4sam_ros.learn.synthetic import SyntheticConfig, write_video
from m4sam_ros.learn.train import TrainConfig, Trainer, lr_factor, run_clip, synthetic_videos
from m4sam_ros.model.checkpoint import read_adapter_config
from m4sam_ros.model.m4sam import build_m4sam
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

SIZE = 64



def _config(tmp_path, name: str, **overrides) -> TrainConfig:
    values = dict(image_size=SIZE, steps=4, warmup_steps=1, lr=1e-3, clip_length=2, synthetic_videos=2, synthetic_frames=5,
                  synthetic_height=32, synthetic_width=40, out_dir=str(tmp_path / name), progress=False,
                  checkpoint_every=0, threads=1)
    values.update(overrides)
    return TrainConfig(**values)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    tensors = {f"param/{n}": p.detach().clone() for n, p in trainer.named_trainable.items()}
    for i, state in enumerate(trainer.optimizer.state_dict()["state"].values()):
        tensors.update({f"adam/{i}/{k}": v.clone() for k, v in state.items()})
    return tensors


def test_resume_is_bit_exact(tmp_path):
    """2N steps in one go == N steps, checkpoint, a fresh process-like Trainer resuming, N steps."""
    # accumulate=2 covers gradient accumulation; memory-attention dropout and modality
    # dropout draw from the torch RNG, seeded per micro-batch from (seed, micro-batch index):
    # a resume that counted micro-batches differently would diverge
    straight = Trainer(_config(tmp_path, "straight", accumulate=2))
    straight.run()
    first = Trainer(_config(tmp_path, "split", accumulate=2))
    for _ in range(2):
        first.train_step()
    checkpoint = first.save_checkpoint()
    resumed = Trainer(_config(tmp_path, "split", accumulate=2, resume=str(checkpoint)))
    result = resumed.run()
    assert resumed.step == straight.step == result.steps == 4
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resume is not exact: {different[:5]}"
    assert resumed.scheduler.state_dict()["last_epoch"] == straight.scheduler.state_dict()["last_epoch"]
    initial = Trainer(_config(tmp_path, "init")).named_trainable
    assert any(not torch.equal(a[f"param/{n}"], p.detach()) for n, p in initial.items()), "training changed nothing"
    log = (tmp_path / "split" / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["step", "3", "4"]  # resumed run logs its own steps
    with pytest.raises(ValueError, match="lr: checkpoint=0.001"):
        Trainer(_config(tmp_path, "split", accumulate=2, lr=5e-4, resume=str(checkpoint))).run()


def test_training_forward_equals_the_tracker_stream(tmp_path):
    """No train/test skew: the training clip path (the tracker's model_inputs, init frame,
    memory step) in eval mode gives the tracker's own probabilities, frame by frame."""
    write_video(tmp_path, "v", SyntheticConfig(height=48, width=64, frames=4, seed=1, missing_depth_prob=0.3))
    frames = [load_frame(r) for r in open_dataset(tmp_path).videos[0].frames]
    assert any(f.depth is None for f in frames) and any(f.depth is not None for f in frames)
    model = build_m4sam("test", image_size=SIZE, seed=0)
    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned"))
    expected = [tracker.step(f.rgb, f.depth_raw, i / 30).probability for i, f in enumerate(frames)]
    batch = collate_clips([frames], SIZE)
    assert batch.present[0, :, 1].tolist() == [float(f.depth is not None) for f in frames]
    with torch.no_grad():
        for t, decoded in run_clip(model.eval(), batch, TrackerConfig().num_memory_frames):
            logits = torch.nn.functional.interpolate(decoded.low_res_logits, size=(48, 64), mode="bilinear",
                                                     align_corners=False)
            np.testing.assert_allclose(torch.sigmoid(logits)[0, 0].numpy(), expected[t], atol=1e-6)
    assert batch.gt.shape == (1, 4, 1, SIZE, SIZE) and 0 < batch.gt.mean() < 1 and batch.has_gt.all()


def test_only_adapters_train_unless_train_all(tmp_path, caplog):
    frozen = Trainer(_config(tmp_path, "frozen"))
    assert frozen.named_trainable and all(n.startswith("adapter.") for n in frozen.named_trainable)
    with caplog.at_level(logging.WARNING, logger="m4sam.train"):
        everything = Trainer(_config(tmp_path, "all", train_all=True))
    assert "--train-all: training ALL" in caplog.text
    assert len(everything.named_trainable) == len(list(everything.model.parameters()))


def test_train_all_weights_load_into_the_tracker(tmp_path):
    config = _config(tmp_path, "all", train_all=True, steps=2)
    trainer = Trainer(config)
    result = trainer.run()
    assert result.sam2_weights is not None and result.sam2_weights.is_file() and result.adapter.is_file()
    assert read_adapter_config(result.adapter).name == "test"
    assert read_adapter_config(result.adapter).depth == config.depth_config == DepthConfig(scale="log")
    assert result.loss_curve.stat().st_size > 1000 and result.log_csv.is_file()
    loaded = SaliencyTracker.from_settings(preset="test", image_size=SIZE, sam2_checkpoint=str(result.sam2_weights),
                                           adapter=str(result.adapter), seed=123)  # another seed: weights must come from files
    in_memory = SaliencyTracker(trainer.model, TrackerConfig(image_size=SIZE, mode="learned"))
    assert loaded.mode == "learned"
    video = synthetic_videos(tmp_path / "val", 1, config, 5)[0]
    for i, record in enumerate(video.frames[:3]):
        frame = load_frame(record)
        a = loaded.step(frame.rgb, frame.depth_raw, i / 30).probability
        b = in_memory.step(frame.rgb, frame.depth_raw, i / 30).probability
        assert np.array_equal(a, b)


def test_a_non_finite_gradient_skips_the_update_and_a_run_of_them_stops_training(tmp_path, caplog):
    """On CPU (no GradScaler) one NaN gradient used to turn every weight NaN for the rest of the
    run, which still wrote its adapter; now the update is skipped, and ten in a row stop it."""
    trainer = Trainer(_config(tmp_path, "nan", steps=20))
    before = {name: p.detach().clone() for name, p in trainer.named_trainable.items()}
    poison = next(iter(trainer.named_trainable.values())).register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with caplog.at_level(logging.WARNING, logger="m4sam.train"):
        assert math.isnan(trainer.train_step()["grad_norm"])
    assert "update skipped (1 in a row)" in caplog.text
    assert all(torch.equal(p, before[name]) for name, p in trainer.named_trainable.items())
    for _ in range(train_module.MAX_NONFINITE_STEPS - 2):
        trainer.train_step()
    with pytest.raises(FloatingPointError, match="diverged: 10 steps in a row"):
        trainer.train_step()
    poison.remove()
    assert math.isfinite(trainer.train_step()["grad_norm"])
    assert all(torch.isfinite(p).all() for p in trainer.named_trainable.values())
    assert any(not torch.equal(p, before[name]) for name, p in trainer.named_trainable.items())


def test_lr_schedule_warms_up_then_decays():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_config_yaml_flags_and_help(tmp_path, capsys):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("steps: 7\nlr: 0.002\nimage_size: 96\n")
    parser = argparse.ArgumentParser()
    train_module.add_arguments(parser)
    args = parser.parse_args(["--config", str(yaml_file), "--lr", "0.003", "--train-all"])
    config = train_module.config_from_args(TrainConfig, args)
    assert (config.steps, config.lr, config.image_size, config.train_all) == (7, 0.003, 96, True)
    yaml_file.write_text("stepz: 7\n")
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        train_module.config_from_args(TrainConfig, parser.parse_args(["--config", str(yaml_file)]))
    with pytest.raises(ValueError, match="needs --sam2-checkpoint"):
        TrainConfig(preset="hiera_t")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        assert "--" + name.replace("_", "-") in text
    assert train_module.run(parser.parse_args(["--data", str(tmp_path / "nowhere"), "--no-progress"])) == 2


def test_bf16_autocast_step_on_cpu(tmp_path):
    trainer = Trainer(_config(tmp_path, "bf16", amp="bf16"))
    losses = trainer.train_step()
    assert np.isfinite(losses["loss"]) and trainer.step == 1


# Proof that training works: the tiny random `test` preset has no pretrained SAM2, so only
# --train-all can make it learn (adapters alone on a random frozen SAM2 stay near chance).
LEARN_STEPS = 40


@pytest.mark.slow
def test_training_raises_held_out_s_measure(tmp_path):
    config = _config(tmp_path, "learn", train_all=True, steps=LEARN_STEPS, lr=3e-3, warmup_steps=5,
                     synthetic_videos=6, synthetic_frames=12, synthetic_height=48, synthetic_width=64)
    held_out = synthetic_videos(tmp_path / "held_out", 2, config, split_seed=999)
    before = evaluate_model(build_m4sam("test", image_size=SIZE, seed=config.seed), held_out, tmp_path / "before")
    trainer = Trainer(config)
    trainer.run()
    after = evaluate_model(trainer.model, held_out, tmp_path / "after")
    s_before, s_after = before["dataset"]["s_measure"], after["dataset"]["s_measure"]
    print(f"held-out S-measure {s_before:.3f} -> {s_after:.3f}, MAE {before['dataset']['mae']:.3f} -> "
          f"{after['dataset']['mae']:.3f} after {LEARN_STEPS} steps")
    assert s_after > s_before + 0.3
    assert after["dataset"]["mae"] < before["dataset"]["mae"]


@pytest.mark.gpu
def test_fp16_gradscaler_step_and_resume_state_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (fp16 autocast + GradScaler path)")
    trainer = Trainer(_config(tmp_path, "cuda", device="cuda", amp="auto"))
    assert trainer.autocast and trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    losses = trainer.train_step()
    assert np.isfinite(losses["loss"])
    checkpoint = trainer.save_checkpoint()
    resumed = Trainer(_config(tmp_path, "cuda", device="cuda", amp="auto", resume=str(checkpoint)))
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == 1 and resumed.scaler.get_scale() == trainer.scaler.get_scale()


@pytest.mark.slow
def test_rendered_scenes_train_and_score_their_held_out_split(tmp_path):
    """--rendered-videos renders robot scenes (train split) to train on; --val-rendered-videos scores
    the val split (objects and layouts training never saw) next to the 2-D set."""
    config = _config(tmp_path, "rendered", rendered_videos=2, rendered_frames=3, rendered_height=48, rendered_width=64,
                     val_rendered_videos=1, val_videos=1, steps=2, synthetic_videos=None)
    assert config.synthetic_videos == 0  # rendered videos given: no 2-D videos unless asked for
    result = Trainer(config).run()
    assert set(result.evaluation) == {"rendered", "synthetic"}
    rendered = result.evaluation["rendered"]
    assert rendered["settings"]["videos"] == 1 and 0.0 <= rendered["dataset"]["s_measure"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "rendered" / "rendered" / "val").glob("val_*")) == ["val_00000"]
    assert len(list((tmp_path / "rendered" / "rendered" / "train").glob("train_*"))) == 2


def test_data_seed_keeps_the_videos_while_the_seed_changes_the_run(tmp_path):
    """--data-seed fixes the generated videos (training and held-out), so --seed alone varies
    the run: the way to measure training's spread on one held-out set."""
    def files(trainer: Trainer) -> dict[str, bytes]:
        root = trainer.out_dir / "synthetic" / "train"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    base = Trainer(_config(tmp_path, "s0"))
    same_data = Trainer(_config(tmp_path, "s1_d0", seed=1, data_seed=0))
    own_data = Trainer(_config(tmp_path, "s1", seed=1))
    assert files(same_data) == files(base) and files(own_data) != files(base)
    assert same_data.config.generation_seed == 0 and own_data.config.generation_seed == 1
    name = next(iter(base.named_trainable))
    assert not torch.equal(base.named_trainable[name], same_data.named_trainable[name])  # the run's seed still acts
