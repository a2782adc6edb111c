"""Pinned outputs: a few frames of the demo stream and a few training steps, bit for bit on CPU.

A refactor must not change what the node publishes or how training moves the weights. The
pins were recorded with the code before the change; a change that alters behaviour on
purpose (new demo weights, a new zero-shot path) re-records them, and says so:

    .venv/bin/python test/test_pins.py --write
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.learn.train import TrainConfig, Trainer
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

PINS = Path(__file__).parent / "data" / "pins_demo_stream.npz"
DATA = Path(__file__).resolve().parents[1] / "m4sam_ros" / "data"
DROPPED_DEPTH = 5  # this frame runs without depth (learned mode: the one-modality pass)


def stream_outputs() -> dict[str, np.ndarray]:
    """The packaged demo weights, learned and zero-shot, on 8 frames of a generated stream."""
    frames = list(generate_video(SyntheticConfig(height=48, width=64, frames=8, seed=7)))
    out = {}
    for mode, adapter in (("learned", DATA / "demo_adapter.pt"), ("zero_shot", None)):
        tracker = SaliencyTracker.from_settings(preset="test", image_size=256, sam2_checkpoint=str(DATA / "demo_sam2.pt"),
                                                adapter=str(adapter) if adapter else None, seed=0,
                                                config=TrackerConfig(mode=mode))
        results = [tracker.step(f.rgb, None if i == DROPPED_DEPTH else f.depth_mm, i / 10.0, f.intrinsics)
                   for i, f in enumerate(frames)]
        out[f"{mode}/probability"] = np.stack([r.probability for r in results])
        out[f"{mode}/object_score"] = np.array([r.object_score for r in results], dtype=np.float64)
    return out


def training_outputs() -> dict[str, np.ndarray]:
    """Three optimizer steps of the test preset on generated clips: losses and a hash of the weights."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig(image_size=64, steps=3, warmup_steps=1, lr=1e-3, clip_length=3,
                                      synthetic_videos=2, synthetic_frames=5, synthetic_height=32, synthetic_width=40,
                                      out_dir=tmp, progress=False, checkpoint_every=0, threads=1))
        losses = [trainer.train_step()["loss"] for _ in range(3)]
        weights = torch.cat([p.detach().flatten() for p in trainer.named_trainable.values()]).numpy()
    return {"train/loss": np.array(losses, dtype=np.float64),
            "train/weights_sha256": np.array(hashlib.sha256(weights.tobytes()).hexdigest())}


@pytest.fixture(scope="module")
def pins() -> dict[str, np.ndarray]:
    with np.load(PINS) as stored:
        return {key: stored[key] for key in stored}


def test_demo_stream_is_bit_identical_to_its_pin(pins):
    for key, value in stream_outputs().items():
        assert value.shape == pins[key].shape, key
        worst = float(np.abs(value - pins[key]).max())
        assert np.array_equal(value, pins[key]), f"{key} moved from its pin (max |diff| {worst:.3g})"


def test_training_steps_are_bit_identical_to_their_pin(pins):
    outputs = training_outputs()
    assert np.array_equal(outputs["train/loss"], pins["train/loss"]), (outputs["train/loss"], pins["train/loss"])
    assert str(outputs["train/weights_sha256"]) == str(pins["train/weights_sha256"])


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_pins.py --write   (re-records the pins from the current code)")
    torch.set_num_threads(1)
    np.savez_compressed(PINS, **stream_outputs(), **training_outputs())
    print(f"wrote {PINS}")
