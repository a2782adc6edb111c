"""Zero-shot is SAM2: given the same first mask, our tracker reproduces ``SAM2VideoPredictor``
(``add_new_mask`` on frame 0, then ``propagate_in_video``; SAM2's own code, imported) on the
frames the bounded bank holds exactly as SAM2 does: until the conditioning frame is
``max_obj_ptrs_in_encoder`` frames away. After that our bank re-indexes to stay bounded and
the drift is measured (README)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.tools.sam2_reference import SAM2VideoStream, sam2_predictor
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

DATA = Path(__file__).resolve().parents[1] / "m4sam_ros" / "data"
TOLERANCE = 1e-4  # max |delta| of the low-resolution logits, CPU, fp32


def _run_both(model, frames: list, first_mask: np.ndarray) -> list[float]:
    """Max |our low-res logits - SAM2's| per frame, both conditioned by ``first_mask`` on frame 0."""
    size = model.config.image_size
    tracker = SaliencyTracker(model, TrackerConfig(image_size=size, mode="zero_shot", lost_score_threshold=0.0,
                                                   gap_timeout_s=1e9))
    tracker.reset(initial_mask=first_mask)
    reference = SAM2VideoStream(sam2_predictor(model.config, weights_from=model), tracker.device, len(frames),
                                frames[0].rgb.shape[:2])
    deltas = []
    for index, frame in enumerate(frames):
        ours = tracker.step(frame.rgb, frame.depth_mm, index / 30.0, frame.intrinsics)
        assert ours.reinitialized == ("prompt" if index == 0 else None)
        reference.step(frame.rgb, first_mask if index == 0 else None)
        deltas.append(float(np.abs(ours.low_res_logits - reference.last_logits[0, 0].float().cpu().numpy()).max()))
    return deltas


def _stream(size: int, frames: int, seed: int) -> tuple[list, np.ndarray]:
    video = list(generate_video(SyntheticConfig(height=size, width=size, frames=frames, seed=seed)))
    return video, video[0].gt > 0


def test_demo_weights_reproduce_sam2s_video_predictor():
    model = load_m4sam("test", 256, sam2_checkpoint=DATA / "demo_sam2.pt")  # SAM2 weights trained for the demo
    frames, first_mask = _stream(256, 24, seed=4)
    deltas = _run_both(model, frames, first_mask)
    exact = model.max_obj_ptrs_in_encoder  # frames 0 .. 15: the bank holds what SAM2 attends to
    assert max(deltas[:exact]) <= TOLERANCE, deltas[:exact]


@pytest.mark.slow
def test_random_hiera_t_reproduces_sam2s_video_predictor():
    model = load_m4sam("hiera_t", 256, seed=3)
    frames, first_mask = _stream(256, 17, seed=5)
    deltas = _run_both(model, frames, first_mask)
    assert max(deltas[:model.max_obj_ptrs_in_encoder]) <= TOLERANCE, deltas
