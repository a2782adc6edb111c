"""The adapter seam is good enough: a second adapter, written here and only registered, runs
through the model, checkpoints, the engines (ONNX export and ONNX Runtime), the tracker and
training without an edit of any of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_adapters
from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.learn.synthetic import SyntheticConfig, generate_video
from m4sam_ros.learn.train import TrainConfig, Trainer
from m4sam_ros.model import adapters
from m4sam_ros.model.adapters import Adapter, AdapterConfig, TrunkGeometry, current_routing
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.checkpoint import CheckpointError, load_adapter, save_adapter
from m4sam_ros.model.m4sam import build_m4sam
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig

SIZE = 64


@dataclass(frozen=True)
class ParallelConfig(AdapterConfig):
    kind: ClassVar[str] = "parallel_test"
    rank: int = 2


class ParallelAdapter(Adapter):
    """A skip-connection adapter beside every resolution-keeping block, RGB and depth alike,
    and a learned scalar mixing depth into RGB: structurally unlike MoE-LoRA (block hooks, not
    qkv hooks; no gates), which is the point."""

    kind = ParallelConfig.kind
    config_type = ParallelConfig

    def __init__(self, config: ParallelConfig, geometry: TrunkGeometry):
        super().__init__(config)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(b.dim, config.rank), nn.GELU(), nn.Linear(config.rank, b.dim))
                                    for b in geometry.trunk.blocks)
        self.depth_weight = nn.Parameter(torch.zeros(()))

    def attach(self, geometry: TrunkGeometry) -> None:
        for block, adapter in zip(geometry.trunk.blocks, self.blocks):
            if block.dim == block.dim_out and not block.q_stride:
                block.register_forward_hook(lambda module, inputs, output, a=adapter: (
                    output if current_routing() == "off" else output + a(inputs[0])))

    def fuse(self, rgb_levels, depth_levels, modality_present):
        has_depth = modality_present[:, 1, None, None, None]
        return [r + self.depth_weight * has_depth * d for r, d in zip(rgb_levels, depth_levels)]

    def refine(self, rgb_levels):
        return list(rgb_levels)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(adapters.ADAPTERS, ParallelAdapter.kind, ParallelAdapter)


def test_a_registered_adapter_builds_trains_saves_and_is_told_apart(registered, tmp_path):
    model = randomize_adapters(build_m4sam("test", image_size=SIZE, seed=0, adapter=ParallelConfig()))
    assert isinstance(model.adapter, ParallelAdapter)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"adapter.{n}" for n, _ in
                                                                            model.adapter.named_parameters()}
    path = save_adapter(model, tmp_path / "parallel.pt")
    loaded = load_m4sam("test", SIZE, adapter=path)  # the file says which adapter to build
    inputs = (torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, SIZE, SIZE), torch.ones(1, 2))
    with torch.no_grad():
        assert torch.equal(loaded.encode(*inputs).image_embed, model.encode(*inputs).image_embed)
        without_depth = loaded.encode(inputs[0], inputs[1], torch.tensor([[1.0, 0.0]]))
        torch.testing.assert_close(loaded.encode_rgb(inputs[0]).image_embed, without_depth.image_embed)
    with pytest.raises(CheckpointError, match="adapter.kind"):
        load_adapter(build_m4sam("test", image_size=SIZE), path)  # a MoE-LoRA model refuses it, naming why

    result = Trainer(TrainConfig(adapter_kind=ParallelAdapter.kind, image_size=SIZE, steps=2, warmup_steps=1,
                                 lr=1e-2, clip_length=2, synthetic_videos=1, synthetic_frames=4, synthetic_height=32,
                                 synthetic_width=40, out_dir=str(tmp_path / "train"), progress=False,
                                 checkpoint_every=0, threads=1)).run()
    trained = load_m4sam("test", SIZE, adapter=result.adapter)
    assert isinstance(trained.adapter, ParallelAdapter)
    assert float(trained.adapter.depth_weight.detach()) != 0.0, "training moved the adapter"


@pytest.mark.slow
def test_a_registered_adapter_exports_and_tracks_on_onnxruntime(registered, tmp_path):
    model = randomize_adapters(build_m4sam("test", image_size=SIZE, seed=0, adapter=ParallelConfig()))
    model.adapter_file = "trained"  # learned mode
    engines = create_engines(model, EngineSettings(backend="onnxruntime", cache_dir=str(tmp_path)))
    frames = list(generate_video(SyntheticConfig(height=48, width=64, frames=4, seed=2)))
    config = TrackerConfig(image_size=SIZE, mode="learned")
    ours = SaliencyTracker(model, config, encoder=engines.encoder, memory_attention=engines.memory_attention)
    reference = SaliencyTracker(model, config)
    for i, frame in enumerate(frames):
        depth = None if i == 2 else frame.depth_mm
        a, b = (t.step(frame.rgb, depth, i / 30.0, frame.intrinsics) for t in (ours, reference))
        assert np.abs(a.probability - b.probability).max() < 1e-4, i
