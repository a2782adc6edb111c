"""SaliencyTracker on the tiny ``test`` preset (CPU, 64 px model): per-frame API, memory bank,
re-initialisation policy, missing depth, determinism, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m4sam_ros.depth import DepthConfig, normalize_depth
from m4sam_ros.engines.base import EncoderEngine
from m4sam_ros.engines.torch_backend import TorchEncoder
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.model import IMAGENET_MEAN, IMAGENET_STD, build_m4sam
from m4sam_ros.postprocess import CameraIntrinsics
from m4sam_ros.prior import PriorConfig, saliency_prior
from m4sam_ros.model.memory import MemoryBank, MemoryEntry
from m4sam_ros.preprocess import model_inputs
from m4sam_ros.tracker import STAGES, SaliencyTracker, TrackerConfig

from helpers import randomize_adapters

SIZE = 64



def _tracker(**config) -> SaliencyTracker:
    return SaliencyTracker.from_settings(preset="test", image_size=SIZE, seed=0, config=TrackerConfig(**config))


_SMALL_VIDEO = list(generate_video(SyntheticConfig(height=48, width=64, frames=10, seed=5)))


@pytest.fixture(scope="module")
def video():
    return list(generate_video(SyntheticConfig(height=120, width=160, frames=12, seed=3)))


def _run(tracker, frames, stamps=None, depth=True):
    stamps = stamps if stamps is not None else [i / 30.0 for i in range(len(frames))]
    return [tracker.step(f.rgb, f.depth_mm if depth else None, s, f.intrinsics) for f, s in zip(frames, stamps)]


def test_step_result_at_input_resolution(video):
    tracker = _tracker(mode="learned")
    frame = video[0]
    small_depth = frame.depth_mm[::2, ::2]  # aligned depth of another size than RGB
    first = tracker.step(frame.rgb, small_depth, 0.0, frame.intrinsics)
    second = tracker.step(video[1].rgb, video[1].depth_mm, 1 / 30, video[1].intrinsics)
    for result in (first, second):
        assert result.probability.shape == result.mask.shape == (120, 160)
        assert result.probability.dtype == np.float32 and result.mask.dtype == np.uint8
        assert np.isfinite(result.probability).all()
        assert result.probability.min() >= 0 and result.probability.max() <= 1
        assert set(np.unique(result.mask)) <= {0, 1}
        assert 0.0 <= result.object_score <= 1.0 and result.used_depth
        assert set(STAGES) <= set(result.timings_ms) and all(v >= 0 for v in result.timings_ms.values())
    assert (first.reinitialized, first.memory_frames) == ("start", 1)
    assert (second.reinitialized, second.memory_frames) == (None, 2)


def test_model_inputs_preprocessing():
    """ImageNet normalisation of RGB and of depth repeated to 3 channels, at model size."""
    rgb = np.full((30, 40, 3), 255, dtype=np.uint8)
    depth = np.zeros((30, 40), dtype=np.float32)
    rgb_in, depth_in, present = model_inputs(rgb, depth, SIZE)
    assert rgb_in.shape == depth_in.shape == (1, 3, SIZE, SIZE) and rgb_in.dtype == np.float32
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    np.testing.assert_allclose(rgb_in[0, :, 5, 5], (1.0 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(depth_in[0, :, 5, 5], (0.0 - mean) / std, rtol=1e-6)
    assert present.tolist() == [[1.0, 1.0]]
    _, no_depth, absent = model_inputs(rgb, None, SIZE)
    assert not no_depth.any() and absent.tolist() == [[1.0, 0.0]]


class _CountingEncoder(TorchEncoder):
    """The PyTorch engine, counting which path the tracker takes."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = {"rgbd": 0, "rgb": 0, "sam2": 0}

    def __call__(self, rgb, depth, present):
        self.calls["rgbd"] += 1
        return super().__call__(rgb, depth, present)

    def encode_rgb(self, rgb):
        self.calls["rgb"] += 1
        return super().encode_rgb(rgb)

    def encode_sam2(self, rgb):
        self.calls["sam2"] += 1
        return super().encode_sam2(rgb)


def test_engines_replace_encoder_and_memory_attention(video):
    """The tracker runs whatever encoder / memory attention it is given (same signatures)."""
    model = build_m4sam("test", image_size=SIZE, seed=0)
    calls = {"memory_attention": 0}

    def memory_attention(frame, memory):
        calls["memory_attention"] += 1
        return model.condition_on_memory(frame, memory)

    encoder = _CountingEncoder(model)
    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned"), "cpu", encoder=encoder,
                              memory_attention=memory_attention)
    engine_run = _run(tracker, video[:3])
    plain_run = _run(_tracker(mode="learned"), video[:3])
    assert encoder.calls == {"rgbd": 3, "rgb": 0, "sam2": 0} and calls == {"memory_attention": 3}
    assert all(np.array_equal(a.probability, b.probability) for a, b in zip(engine_run, plain_run))


def test_encoder_path_follows_mode_and_depth(video):
    """Zero-shot frames run SAM2's own encoder; learned-mode frames whose depth dropped out
    skip the depth pass, with the result of the RGB-D pass given depth marked absent."""
    model = randomize_adapters(build_m4sam("test", image_size=SIZE, seed=0))
    zero_shot = _CountingEncoder(model)
    _run(SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="zero_shot"), "cpu", encoder=zero_shot),
         video[:3])
    assert zero_shot.calls == {"rgbd": 0, "rgb": 0, "sam2": 3}
    learned = _CountingEncoder(model)
    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned"), "cpu", encoder=learned)
    fast = [tracker.step(f.rgb, None if f.index == 1 else f.depth_mm, f.index / 30.0) for f in video[:3]]
    assert learned.calls == {"rgbd": 2, "rgb": 1, "sam2": 0}

    class RgbdOnly(TorchEncoder):  # an engine without a one-modality path: the base class's fallback
        def encode_rgb(self, rgb):
            return EncoderEngine.encode_rgb(self, rgb)

    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned"), "cpu", encoder=RgbdOnly(model))
    slow = [tracker.step(f.rgb, None if f.index == 1 else f.depth_mm, f.index / 30.0) for f in video[:3]]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_float_metre_depth_with_holes():
    tracker = _tracker(mode="learned")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (48, 80)).astype(np.float32)
    depth[:10] = np.nan
    depth[20:25] = 0.0
    for i in range(3):
        result = tracker.step(rgb, depth, float(i))
        assert np.isfinite(result.probability).all() and result.probability.shape == (48, 80)


def test_zero_shot_conditioning_frame_is_the_chosen_initial_mask(video):
    """Zero-shot: the first frame's mask is what the initialisation chose (a candidate or the
    prior), made the output by SAM2's mask-as-output path; without depth it is the prior."""
    tracker = _tracker(mode="zero_shot")
    frame = video[0]
    result = tracker.step(frame.rgb, frame.depth_mm, 0.0, frame.intrinsics)
    chosen = result.initialisation.mask
    iou = (chosen & (result.mask > 0)).sum() / (chosen | (result.mask > 0)).sum()
    assert iou > 0.8 and result.initialisation.rule.split(":")[0] in ("geometry", "prior")
    assert result.object_score > 0.99  # SAM2's mask-as-output path: a non-empty mask is an object
    assert result.objects and result.objects[0].centroid is not None  # 3D from depth + intrinsics
    assert tracker.step(video[1].rgb, video[1].depth_mm, 1 / 30).initialisation is None  # tracking, not initialising
    assert tracker.mode == "zero_shot" and _tracker().mode == "zero_shot"  # auto without an adapter

    tracker.reset()
    without_depth = tracker.step(frame.rgb, None, 1.0)
    prior = saliency_prior(None, None, (120, 160)) >= 0.5
    assert without_depth.initialisation.rule == "prior: no metric depth"
    assert np.array_equal(without_depth.initialisation.mask, prior)


def test_sam2_refinement_plumbing(video):
    """SAM2's decoder re-segments the candidates in one batched call. The random test preset
    cannot show that the masks get better (no pretrained weights here): this checks the plumbing."""
    tracker = _tracker(mode="zero_shot", refine_proposals="always")
    calls = []
    original = tracker.model.masks_from_points

    def counting(frame, points):
        calls.append(points.shape)
        return original(frame, points)

    tracker.model.masks_from_points = counting
    frame = video[0]
    result = tracker.step(frame.rgb, frame.depth_mm, 0.0, frame.intrinsics)
    candidates = result.initialisation.proposals.candidates
    if candidates:
        assert calls == [(len(candidates), 2)]  # one call for all candidates
        assert all("sam2_iou" in c.scores and 0.0 <= c.scores["sam2_iou"] <= 1.0 for c in candidates)
    assert _tracker(mode="zero_shot")._refines() is False  # auto: the test preset's weights never saw points


@pytest.mark.parametrize("mode", ["learned", "zero_shot"])
def test_two_trackers_are_bit_identical(video, mode):
    a, b = _run(_tracker(mode=mode), video[:8]), _run(_tracker(mode=mode), video[:8])
    assert all(np.array_equal(x.probability, y.probability) for x, y in zip(a, b))
    assert [x.object_score for x in a] == [y.object_score for y in b]
    assert not np.array_equal(a[0].probability, a[7].probability)  # frames do differ


@pytest.mark.slow
def test_memory_bank_is_bounded_over_500_frames():
    tracker = _tracker(mode="learned", num_memory_frames=6)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    depths = [rng.integers(500, 4000, (SIZE, SIZE), dtype=np.uint16) for _ in range(5)]
    counts, sizes, indices, memory = [], [], [], []
    for i in range(500):
        result = tracker.step(frames[i % 5], depths[i % 5], i / 30.0)
        assert result.reinitialized in ("start", None, "lost")
        counts.append(len(tracker.memory.tensors()))
        sizes.append(tracker.memory.nbytes())
        view = tracker.memory.view()
        indices.append(max([view.frame_index, *view.output_dict["non_cond_frame_outputs"]]))
        memory.append(result.memory_frames)
    cap = tracker.model.max_obj_ptrs_in_encoder
    assert max(counts[50:]) == counts[-1] <= 3 * 7 + (cap - 1 - 6)  # 7 spatial memories + pointer-only frames
    assert max(sizes[50:]) == max(sizes)
    assert max(indices) <= cap
    assert max(memory) == 7


def test_bank_with_fewer_memory_frames_keeps_older_pointers():
    """N < num_maskmem - 1: frames beyond N lose their spatial memory; SAM2 then only reads the
    object pointers of frames older than num_maskmem - 1."""
    bank = MemoryBank(num_memory_frames=2, num_maskmem=7, max_obj_ptrs=16)

    def entry(value: float) -> MemoryEntry:
        return MemoryEntry(torch.full((1, 4, 2, 2), value), torch.zeros(1, 4, 2, 2), torch.full((1, 8), value))

    bank.set_conditioning(entry(0.0))
    for value in range(1, 11):
        bank.add(entry(float(value)))
    view = bank.view()  # for frame 11
    recent = view.output_dict["non_cond_frame_outputs"]
    assert view.frame_index == 11 and len(bank) == 3
    assert {t for t, out in recent.items() if "maskmem_features" in out} == {9, 10}
    assert {t for t, out in recent.items() if set(out) == {"obj_ptr"}} == {1, 2, 3, 4}
    assert recent[10]["obj_ptr"][0, 0] == 10.0
    # and the model runs on such a bank
    results = _run(_tracker(mode="learned", num_memory_frames=2), _SMALL_VIDEO)
    assert [r.memory_frames for r in results] == [1, 2, 3] + [3] * 7


def test_bank_matches_sam2_track_step_before_the_index_cap():
    """Until the conditioning frame is max_obj_ptrs frames away, the re-indexed bank gives what
    SAM2's own track_step computes with its unbounded per-frame dict (memory features kept in
    bfloat16, as SAM2's video predictor keeps them)."""
    tracker = _tracker(mode="learned")
    model = build_m4sam("test", image_size=SIZE, seed=0)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(12)]
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    results = [tracker.step(f, None, i / 30.0) for i, f in enumerate(frames)]
    assert [r.reinitialized for r in results[1:]] == [None] * 11, "test needs a stream without re-init"
    with torch.inference_mode():
        for index, rgb in enumerate(frames):
            enc = model.encode(*(torch.from_numpy(a) for a in model_inputs(rgb, None, SIZE)))
            feats = [enc.high_res_s4, enc.high_res_s8, enc.image_embed]
            out = model.track_step(
                frame_idx=index, is_init_cond_frame=index == 0,
                current_vision_feats=[f.flatten(2).permute(2, 0, 1) for f in feats],
                current_vision_pos_embeds=[enc.pos_enc.flatten(2).permute(2, 0, 1)] * 3,
                feat_sizes=[tuple(f.shape[-2:]) for f in feats], point_inputs=None, mask_inputs=None,
                output_dict=output_dict, num_frames=1000)
            out["maskmem_features"] = out["maskmem_features"].to(torch.bfloat16)
            output_dict["cond_frame_outputs" if index == 0 else "non_cond_frame_outputs"][index] = out
            want = torch.sigmoid(F.interpolate(out["pred_masks"], size=(SIZE, SIZE), mode="bilinear",
                                               align_corners=False))[0, 0].numpy()
            np.testing.assert_array_equal(results[index].probability, want)


def test_reinit_on_reset(video):
    tracker = _tracker()
    _run(tracker, video[:3])
    tracker.reset()
    result = tracker.step(video[3].rgb, video[3].depth_mm, 0.2)
    assert result.reinitialized == "reset" and result.memory_frames == 1


def test_reinit_on_stamp_backwards(video):
    results = _run(_tracker(), video[:4], stamps=[10.0, 10.1, 10.2, 5.0])
    assert [r.reinitialized for r in results] == ["start", None, None, "stamp_backwards"]
    assert results[3].memory_frames == 1


def test_reinit_on_gap(video):
    results = _run(_tracker(gap_timeout_s=0.5), video[:4], stamps=[1.0, 1.4, 1.8, 2.5])
    assert [r.reinitialized for r in results] == ["start", None, None, "gap"]


def test_reinit_when_lost(video):
    patience = 3
    results = _run(_tracker(mode="learned", lost_score_threshold=1.0, lost_patience_frames=patience), video[:8])
    assert all(r.object_score < 1.0 for r in results), "every frame must count as low for this test"
    # low for `patience` frames -> the next frame re-initialises, and the count starts again
    assert [r.reinitialized for r in results] == ["start", None, None, "lost", None, None, "lost", None]
    never = _run(_tracker(mode="learned", lost_score_threshold=0.0, lost_patience_frames=1), video[:8])
    assert [r.reinitialized for r in never] == ["start"] + [None] * 7


@pytest.mark.parametrize("mode", ["learned", "zero_shot"])
def test_missing_depth_mid_stream_keeps_memory(video, mode):
    tracker = _tracker(mode=mode)
    with_depth = [True, True, False, False, True, False, True, True]
    results = [tracker.step(f.rgb, f.depth_mm if d else None, i / 30.0, f.intrinsics)
               for i, (f, d) in enumerate(zip(video, with_depth))]
    assert [r.reinitialized for r in results] == ["start"] + [None] * 7
    assert [r.used_depth for r in results] == with_depth
    assert [r.memory_frames for r in results] == [1, 2, 3, 4, 5, 6, 7, 7]
    assert all(np.isfinite(r.probability).all() for r in results)
    assert all(r.objects == [] or r.objects[0].centroid is None for r, d in zip(results, with_depth) if not d)


def test_stream_starting_without_depth(video):
    result = _tracker(mode="zero_shot").step(video[0].rgb, None, 0.0)  # centre-only prior
    assert result.reinitialized == "start" and not result.used_depth and result.mask.any()


def test_bad_input_is_refused(video):
    tracker = _tracker()
    rgb, depth = video[0].rgb, video[0].depth_mm
    with pytest.raises(ValueError, match="uint8"):
        tracker.step(rgb.astype(np.float32), depth, 0.0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tracker.step(rgb[:, :, :2], depth, 0.0)
    with pytest.raises(TypeError, match="numpy array"):
        tracker.step(rgb.tolist(), depth, 0.0)
    with pytest.raises(ValueError, match="depth must be"):
        tracker.step(rgb, np.dstack([depth, depth]), 0.0)
    with pytest.raises(ValueError, match="dtype"):
        tracker.step(rgb, depth.astype(np.int32), 0.0)
    with pytest.raises(ValueError, match="finite"):
        tracker.step(rgb, depth, float("nan"))
    with pytest.raises(TypeError, match="CameraIntrinsics"):
        tracker.step(rgb, depth, 0.0, intrinsics=(1, 2, 3, 4))
    assert tracker.step(rgb, depth, 0.0, CameraIntrinsics(100, 100, 80, 60)).reinitialized == "start"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        SaliencyTracker(build_m4sam("test", image_size=SIZE), TrackerConfig(image_size=128))
    with pytest.raises(ValueError, match="num_memory_frames"):
        MemoryBank(num_memory_frames=7, num_maskmem=7, max_obj_ptrs=16)
    with pytest.raises(ValueError, match="mode"):
        TrackerConfig(mode="magic")
    with pytest.raises(ValueError, match="gap_timeout_s"):
        TrackerConfig(gap_timeout_s=0)
    with pytest.raises(ValueError, match="near_is_bright"):
        TrackerConfig(prior=PriorConfig(near_is_bright=False), depth=DepthConfig())
    with pytest.raises(ValueError, match="near_is_bright"):  # against the model's depth, once it is known
        SaliencyTracker(build_m4sam("test", image_size=SIZE), TrackerConfig(image_size=SIZE,
                                                                           prior=PriorConfig(near_is_bright=False)))


class _DepthInput(TorchEncoder):
    """The PyTorch engine, keeping the depth picture the tracker hands it."""

    def __call__(self, rgb, depth, present):
        self.depth = depth
        return super().__call__(rgb, depth, present)


def test_depth_normalisation_is_the_models(video):
    """The tracker normalises depth the way the model was trained (its config, from its adapter
    file); learned mode refuses another, zero-shot (depth only feeds the prior) takes one."""
    log = DepthConfig(scale="log")
    model = build_m4sam("test", image_size=SIZE, seed=0, depth=log)
    seen = _DepthInput(model)
    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned"), encoder=seen)
    assert tracker.config.depth == log
    frame = video[0]
    tracker.step(frame.rgb, frame.depth_mm, 0.0)
    expected = model_inputs(frame.rgb, normalize_depth(frame.depth_mm, log)[0], SIZE)[1]
    assert torch.equal(seen.depth, torch.from_numpy(expected))
    assert not np.allclose(expected, model_inputs(frame.rgb, normalize_depth(frame.depth_mm)[0], SIZE)[1])
    with pytest.raises(ValueError, match="trained on"):
        SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned", depth=DepthConfig()))
    zero_shot = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="zero_shot", depth=DepthConfig(max_m=4.0)))
    assert zero_shot.config.depth == DepthConfig(max_m=4.0)


@pytest.mark.parametrize("mode", ["learned", "zero_shot"])
def test_reset_with_an_initial_mask_seeds_the_memory_with_it(video, mode):
    """A mask from outside (detector, grasp planner, operator) is the next conditioning frame's
    mask, whatever the mode; it is scaled from the RGB size to the model's."""
    tracker = _tracker(mode=mode)
    _run(tracker, video[:2])
    prompt = video[2].gt > 0  # (120, 160): the RGB size, not the model's
    tracker.reset(initial_mask=prompt)
    seeded = tracker.step(video[2].rgb, video[2].depth_mm, 2 / 30, video[2].intrinsics)
    after = tracker.step(video[3].rgb, video[3].depth_mm, 3 / 30, video[3].intrinsics)
    assert (seeded.reinitialized, after.reinitialized) == ("prompt", None)
    size = SIZE // 4
    expected = F.interpolate(torch.from_numpy(prompt).float()[None, None], size=(size, size), mode="bilinear",
                             antialias=True)[0, 0].numpy() >= 0.5
    inside = seeded.low_res_logits > 0
    assert (inside & expected).sum() / (inside | expected).sum() > 0.8  # the mask, as SAM2 makes it its output
    assert seeded.memory_frames == 1 and seeded.object_score > 0.99
    with pytest.raises(ValueError, match="initial_mask"):
        tracker.reset(initial_mask=np.zeros((4, 4, 3), bool))


def test_non_finite_output_is_withheld_and_the_memory_restarts(video):
    from m4sam_ros.tracker import NonFiniteOutput

    tracker = _tracker(mode="learned")
    _run(tracker, video[:2])
    weight = tracker.model.sam_mask_decoder.output_upscaling[0].weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))  # what a corrupt weight does at run time
    with pytest.raises(NonFiniteOutput, match="not finite"):
        tracker.step(video[2].rgb, video[2].depth_mm, 2 / 30, video[2].intrinsics)
    assert len(tracker.memory) == 0  # the garbage did not stay in memory
    with torch.no_grad():
        weight.copy_(saved)
    good = tracker.step(video[3].rgb, video[3].depth_mm, 3 / 30, video[3].intrinsics)
    assert good.reinitialized == "nonfinite" and np.isfinite(good.probability).all()
