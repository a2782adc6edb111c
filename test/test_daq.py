"""SAM-DAQ, the second model variant (adapter kind ``sam_daq``): PAMIE's parallel adapters and
QTM's query memory at the test preset, through the same model, checkpoints, training, ONNX
export, ONNX Runtime, tracker and node as M4-SAM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rclpy.qos import QoSProfile

from helpers import TEST_MODEL, NodeProcess, Probe, SyntheticCamera, randomize_adapters, wait_until
from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.learn.evaluate import evaluate_model
from m4sam_ros.learn.losses import LossWeights, frame_losses
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.learn.train import TrainConfig, Trainer, synthetic_videos
from m4sam_ros.model.adapters import SAMDAQ, SAMDAQConfig
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.checkpoint import CheckpointError, load_adapter, save_adapter
from m4sam_ros.model.m4sam import build_m4sam
from m4sam_ros.model.query_memory import QueryMemory
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

SIZE = 64


def _daq(seed: int = 0, randomize: bool = True):
    model = build_m4sam("test", image_size=SIZE, seed=seed, adapter=SAMDAQConfig())
    return randomize_adapters(model) if randomize else model


def _inputs(batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, SIZE, SIZE)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_shapes_and_finiteness_at_the_test_preset():
    model = _daq()
    assert isinstance(model.adapter, SAMDAQ) and not model.uses_memory_attention(zero_shot=False)
    assert model.uses_memory_attention(zero_shot=True)  # zero-shot stays SAM2's own
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"adapter.{n}" for n, _ in model.adapter.named_parameters()}
    assert {n.split(".")[1] for n in trainable} == {"depth_adapters", "dpa", "intermediate", "qtm"}
    rgb, depth = _inputs(batch=2)
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    memory = model.new_memory(zero_shot=False, num_memory_frames=6)
    assert isinstance(memory, QueryMemory) and len(memory) == 0 and memory.nbytes() == 0
    with torch.no_grad():
        frame = model.encode(rgb, depth, present)
        outputs = [memory.step(model, frame, conditioning=t == 0) for t in range(3)]
    c = model.config.d_model
    assert [tuple(t.shape) for t in frame] == [(2, c, 4, 4), (2, c // 8, 16, 16), (2, c // 4, 8, 8), (2, c, 4, 4)]
    for out in outputs:
        assert out.low_res_logits.shape == (2, 1, SIZE // 4, SIZE // 4)
        assert out.high_res_logits.shape == (2, 1, SIZE, SIZE)
        assert out.obj_ptr.shape == (2, c) and out.object_score_logits.shape == (2, 1)
        assert all(torch.isfinite(t).all() for t in out[:4])
        assert out.aux_logits == ()  # inference computes no intermediate predictions
    assert memory.queries.shape == (2, 8, c) and torch.isfinite(memory.queries).all() and len(memory) == 1
    out = memory.step(model, model.encode(rgb, depth, present), conditioning=False)  # gradients recorded: training
    assert [tuple(a.shape) for a in out.aux_logits] == [(2, 1, 4, 4)]  # the highest level, as the paper supervises


def test_fresh_adapters_leave_sam2s_encoder_unchanged():
    """Up-projections start at zero: an untrained PAMIE is SAM2's image encoder, RGB-D pass included."""
    model = _daq(randomize=False)
    rgb, depth = _inputs()
    with torch.no_grad():
        sam2 = model.encode_sam2(rgb)
        for encoded in (model.encode_rgb(rgb), model.encode(rgb, depth, torch.ones(1, 2))):
            for ours, theirs in zip(encoded, sam2):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_depth_guides_rgb_and_absent_depth_equals_the_one_modality_pass():
    model = _daq()
    rgb, depth = _inputs(batch=2)
    with torch.no_grad():
        mixed = model.encode(rgb, depth, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
        alone = model.encode_rgb(rgb)
    for fused, rgb_only in zip(mixed, alone):
        torch.testing.assert_close(fused[1], rgb_only[1], atol=1e-5, rtol=1e-5)  # depth absent: the RGB pass
    assert (mixed.image_embed[0] - alone.image_embed[0]).abs().max() > 1e-3  # depth present: the DPA used it


def _training_clip(model, frames: int = 3) -> tuple[torch.Tensor, int]:
    """Loss of a short clip and the bytes autograd saved for backward (parameters excluded)."""
    generator = torch.Generator().manual_seed(1)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    total = torch.zeros(())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        memory = model.new_memory(zero_shot=False, num_memory_frames=6)
        for t in range(frames):
            rgb, depth = _inputs(seed=t)
            out = memory.step(model, model.encode(rgb, depth, torch.ones(1, 2)), conditioning=t == 0)
            target = (torch.rand(1, 1, SIZE, SIZE, generator=generator) > 0.5).float()
            total = total + frame_losses(out.high_res_logits, out.object_score_logits, target, LossWeights(),
                                         out.aux_logits)["total"].sum()
    return total, sum(saved.values())


def test_gradients_bypass_the_frozen_trunk_and_reach_every_adapter():
    model = _daq()
    loss, bypassed = _training_clip(model)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("adapter."))
    model.adapter.bypass_trunk = False  # the same clip, back-propagated through the frozen trunk too
    _, through = _training_clip(model)
    assert bypassed < through, (bypassed, through)
    model.adapter.bypass_trunk = True
    for parameter in model.parameters():  # --train-all: the trunk trains, so it is back-propagated through
        parameter.requires_grad_(True)
    loss, _ = _training_clip(model)
    loss.backward()
    assert model.image_encoder.trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_conditioning_resets_the_queries_and_a_mask_seeds_them():
    model = _daq()
    rgb, depth = _inputs()
    memory = model.new_memory(zero_shot=False, num_memory_frames=6)
    with torch.no_grad():
        frame = model.encode(rgb, depth, torch.ones(1, 2))
        with pytest.raises(RuntimeError, match="before a conditioning frame"):
            memory.step(model, frame, conditioning=False)
        memory.step(model, frame, conditioning=True)
        first = memory.queries.clone()
        for _ in range(3):
            memory.step(model, frame, conditioning=False)
        assert not torch.equal(memory.queries, first)
        memory.step(model, frame, conditioning=True)
        torch.testing.assert_close(memory.queries, first)
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., 16:40, 20:44] = 1.0
        seeded = memory.step(model, frame, conditioning=True, mask=mask)
        assert torch.equal(seeded.high_res_logits > 0, mask > 0)  # the given mask is the output
        assert not torch.allclose(memory.queries, first)
        memory.clear()
        assert memory.queries is None and len(memory) == 0


@pytest.mark.slow
def test_query_state_is_bounded_over_500_frames():
    model = _daq()
    model.adapter_file = "trained"  # learned mode
    tracker = SaliencyTracker(model, TrackerConfig(image_size=SIZE, mode="learned", lost_score_threshold=0.0,
                                                   gap_timeout_s=1e9))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    depths = [rng.integers(500, 4000, (SIZE, SIZE), dtype=np.uint16) for _ in range(5)]
    sizes, norms = [], []
    for i in range(500):
        result = tracker.step(frames[i % 5], None if i % 7 == 3 else depths[i % 5], i / 30.0)
        assert result.reinitialized == ("start" if i == 0 else None) and result.memory_frames == 1
        sizes.append(tracker.memory.nbytes())
        norms.append(float(tracker.memory.queries.norm(dim=-1).max()))
    assert set(sizes) == {8 * model.config.d_model * 4}  # one (1, N_v, C) float32 tensor, every frame
    assert np.isfinite(norms).all() and max(norms[10:]) < 2 * max(norms[:10])


def test_adapter_file_says_its_kind_and_other_models_refuse_it(tmp_path):
    model = _daq()
    path = save_adapter(model, tmp_path / "daq.pt")
    loaded = load_m4sam(adapter=path)
    assert isinstance(loaded.adapter, SAMDAQ) and loaded.config.adapter == SAMDAQConfig()
    rgb, depth = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode(rgb, depth, torch.ones(1, 2)).image_embed,
                           model.encode(rgb, depth, torch.ones(1, 2)).image_embed)
        assert torch.equal(loaded.adapter.qtm.video_queries, model.adapter.qtm.video_queries)
    with pytest.raises(CheckpointError, match="adapter.kind"):
        load_adapter(build_m4sam("test", image_size=SIZE), path)
    with pytest.raises(CheckpointError, match="adapter.video_queries"):
        load_adapter(build_m4sam("test", image_size=SIZE, adapter=SAMDAQConfig(video_queries=5)), path)


# Proof that the variant learns: as for M4-SAM (test_train.py), the tiny random `test` preset
# has no pretrained SAM2 to lean on, so it trains everything (--train-all).
LEARN_STEPS = 40


@pytest.mark.slow
def test_trained_tiny_variant_beats_its_untrained_self(tmp_path):
    config = TrainConfig(adapter_kind="sam_daq", train_all=True, image_size=SIZE, steps=LEARN_STEPS, lr=3e-3,
                         warmup_steps=5, clip_length=2, synthetic_videos=6, synthetic_frames=12, synthetic_height=48,
                         synthetic_width=64, out_dir=str(tmp_path / "learn"), progress=False, checkpoint_every=0,
                         threads=1)
    held_out = synthetic_videos(tmp_path / "held_out", 2, config, split_seed=999)
    before = evaluate_model(load_m4sam("test", SIZE, adapter_kind="sam_daq", seed=config.seed), held_out,
                            tmp_path / "before")
    result = Trainer(config).run()
    trained = load_m4sam(adapter=result.adapter, sam2_checkpoint=result.sam2_weights)
    assert isinstance(trained.adapter, SAMDAQ)
    after = evaluate_model(trained, held_out, tmp_path / "after")
    s_before, s_after = before["dataset"]["s_measure"], after["dataset"]["s_measure"]
    print(f"SAM-DAQ held-out S-measure {s_before:.3f} -> {s_after:.3f}, MAE {before['dataset']['mae']:.3f} -> "
          f"{after['dataset']['mae']:.3f} after {LEARN_STEPS} steps")
    assert s_after > s_before + 0.3
    assert after["dataset"]["mae"] < before["dataset"]["mae"]
    log = (tmp_path / "learn" / "train_log.csv").read_text().splitlines()
    assert float(log[1].split(",")[6]) > 0  # the intermediate term was trained


@pytest.mark.slow
def test_exports_only_the_encoder_and_tracks_on_onnxruntime_as_in_pytorch(tmp_path):
    from m4sam_ros.engines.onnxruntime_backend import OrtGraph
    from m4sam_ros.tools.parity import encoder_parity, worst

    model = _daq()
    model.adapter_file = "trained"  # learned mode
    engines = create_engines(model, EngineSettings(backend="onnxruntime", cache_dir=str(tmp_path)))
    exported = list(tmp_path.rglob("*.onnx"))
    assert len(exported) == 1, "QTM has no memory attention: the encoder is the only graph"
    error = worst(encoder_parity(model, OrtGraph(exported[0]), frames=3))  # the last frame has no depth
    assert error.relative < 1e-5, error
    frames = list(generate_video(SyntheticConfig(height=48, width=64, frames=6, seed=2)))
    config = TrackerConfig(image_size=SIZE, mode="learned")
    ours = SaliencyTracker(model, config, encoder=engines.encoder, memory_attention=engines.memory_attention)
    reference = SaliencyTracker(model, config)
    for i, frame in enumerate(frames):
        depth = None if i == 2 else frame.depth_mm
        a, b = (t.step(frame.rgb, depth, i / 30.0, frame.intrinsics) for t in (ours, reference))
        assert np.abs(a.probability - b.probability).max() < 1e-4, i


@pytest.mark.slow
def test_the_node_runs_the_variant_end_to_end(ros, log_dir, tmp_path):
    adapter = save_adapter(_daq(), tmp_path / "daq_adapter.pt")
    namespace = "/sam_daq"
    process = NodeProcess(log_dir, namespace, *TEST_MODEL, f"model.adapter:={adapter}", "diagnostics.period:=0.5")
    probe = Probe(ros, namespace)
    camera = SyntheticCamera(ros, namespace, QoSProfile(depth=5))
    try:
        wait_until(lambda: probe.mask.last() is not None or not process.alive(), 90, "the first mask")
        assert process.alive(), f"node exited:\n{process.output()[-3000:]}"
        masks = probe.wait_masks(5, timeout=30, since=0.0)
        assert all(camera.was_sent(m.header) for m in masks)
        assert "test 64px learned (sam_daq) on pytorch/cpu" in process.output(), process.output()[-3000:]
        status = probe.wait_diag(lambda d: d.get("memory_frames") == "1", 15, "diagnostics of the query state")
        assert status["level"] == 0, status
    finally:
        camera.stop()
        process.kill()


def test_demo_recipe_is_m4sams_with_the_other_adapter():
    """The two variants' demo weights compare like for like: one recipe, two adapters (and, until
    SAM-DAQ's weights are retrained on it, M4-SAM's log depth scale)."""
    import yaml

    from helpers import ROOT

    m4sam, daq = (yaml.safe_load((ROOT / "config" / name).read_text()) for name in ("train_demo.yaml",
                                                                                 "train_daq_demo.yaml"))
    outputs = {"out_dir", "adapter_out", "sam2_weights_out", "depth_scale"}
    assert (m4sam["depth_scale"], daq["depth_scale"]) == ("log", "linear")
    assert daq.pop("adapter_kind") == "sam_daq" and "adapter_kind" not in m4sam
    assert {k: v for k, v in daq.items() if k not in outputs} == {k: v for k, v in m4sam.items() if k not in outputs}
    assert TrainConfig(**daq, adapter_kind="sam_daq").steps == m4sam["steps"]  # every key a TrainConfig field


def test_packaged_demo_weights_are_the_variant_and_track_a_generated_stream():
    from helpers import ROOT

    data = ROOT / "m4sam_ros" / "data"
    tracker = SaliencyTracker.from_settings(sam2_checkpoint=str(data / "daq_demo_sam2.pt"),
                                            adapter=str(data / "daq_demo_adapter.pt"), config=TrackerConfig())
    assert tracker.mode == "learned" and isinstance(tracker.model.adapter, SAMDAQ)
    assert tracker.model.config.image_size == 256
    frames = generate_video(SyntheticConfig(height=120, width=160, frames=8, seed=7))
    errors = [np.abs(tracker.step(f.rgb, f.depth_mm, i / 30.0, f.intrinsics).probability - (f.gt > 0)).mean()
              for i, f in enumerate(frames)]
    assert max(errors) < 0.05, errors  # measured 0.011 .. 0.018
