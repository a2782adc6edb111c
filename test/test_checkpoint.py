"""Checkpoint I/O: official-format SAM2 checkpoints (strict), adapter files, bad files."""
from __future__ import annotations

import pytest
import torch

from m4sam_ros.depth import DepthConfig
from m4sam_ros.model import (CheckpointError, build_m4sam, load_adapter, load_m4sam, load_sam2_checkpoint,
                             read_adapter_config, save_adapter)
from m4sam_ros.model.m4sam import TRAINABLE_PREFIXES

SIZE = 64



@pytest.fixture(scope="module")
def hiera_t_checkpoint(tmp_path_factory):
    """An official-format checkpoint of the REAL hiera_t architecture (random weights)."""
    source = build_m4sam("hiera_t", image_size=128, seed=1)
    state = {k: v for k, v in source.state_dict().items() if k in set(source.frozen_keys())}
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    return path, state


def test_official_checkpoint_loads_strictly(hiera_t_checkpoint):
    path, state = hiera_t_checkpoint
    model = build_m4sam("hiera_t", image_size=128, seed=2)
    assert not torch.equal(model.state_dict()["no_mem_embed"], state["no_mem_embed"])
    load_sam2_checkpoint(model, path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # the hiera_t model runs after loading: encode a frame at 128 px
    with torch.no_grad():
        out = model.encode(torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128), torch.ones(1, 2))
    assert out.image_embed.shape == (1, 256, 8, 8) and torch.isfinite(out.image_embed).all()


def test_checkpoint_with_wrong_keys_names_them(hiera_t_checkpoint, tmp_path):
    _, state = hiera_t_checkpoint
    broken = dict(state)
    broken["no_mem_embedding"] = broken.pop("no_mem_embed")
    path = tmp_path / "renamed.pt"
    torch.save({"model": broken}, path)
    model = build_m4sam("hiera_t", image_size=128)
    with pytest.raises(CheckpointError, match=r"missing keys: no_mem_embed\b.*unexpected keys: no_mem_embedding"):
        load_sam2_checkpoint(model, path)


def test_checkpoint_of_another_preset_is_refused(tmp_path):
    other = build_m4sam("test", image_size=SIZE, embed_dim=16)
    path = tmp_path / "other.pt"
    torch.save({"model": {k: other.state_dict()[k] for k in other.frozen_keys()}}, path)
    model = build_m4sam("test", image_size=SIZE)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_sam2_checkpoint(model, path)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", None])
def test_corrupt_files_raise_clear_errors(tmp_path, hiera_t_checkpoint, content):
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        data = hiera_t_checkpoint[0].read_bytes()
        content = data[: len(data) // 3]
    path.write_bytes(content)
    model = build_m4sam("test", image_size=SIZE)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_sam2_checkpoint(model, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_adapter(model, path)


def test_wrong_payloads_are_refused(tmp_path):
    model = build_m4sam("test", image_size=SIZE)
    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' state dict"):
        load_sam2_checkpoint(model, not_dict)
    adapter = save_adapter(model, tmp_path / "adapter.pt")
    with pytest.raises(CheckpointError, match="adapter file, not a SAM2 checkpoint"):
        load_sam2_checkpoint(model, adapter)
    sam2_file = tmp_path / "sam2.pt"
    torch.save({"model": {k: model.state_dict()[k] for k in model.frozen_keys()}}, sam2_file)
    with pytest.raises(CheckpointError, match="looks like a SAM2 checkpoint"):
        load_adapter(model, sam2_file)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sam2_checkpoint(model, tmp_path / "missing.pt")
    state = {k: model.state_dict()[k] for k in model.frozen_keys()}
    key = sorted(state)[0]
    state[key] = [1, 2, 3]  # a non-tensor where a tensor belongs: named, not an AttributeError
    not_tensor = tmp_path / "not_tensor.pt"
    torch.save({"model": state}, not_tensor)
    with pytest.raises(CheckpointError, match=f"{key} \\(list, not a tensor\\)"):
        load_sam2_checkpoint(model, not_tensor)


def test_adapter_round_trip(tmp_path):
    trained = build_m4sam("test", image_size=SIZE, seed=0)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name.startswith(TRAINABLE_PREFIXES):
                p.add_(torch.randn_like(p) * 0.1)
    path = save_adapter(trained, tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    assert set(payload["state_dict"]) == set(trained.trainable_state_dict())  # trainable tensors only
    assert read_adapter_config(path) == trained.config

    fresh = build_m4sam("test", image_size=SIZE, seed=0)  # same frozen weights, fresh adapters
    inputs = (torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, SIZE, SIZE), torch.ones(1, 2))
    with torch.no_grad():
        before = fresh.encode(*inputs).image_embed
        load_adapter(fresh, path)
        after, want = fresh.encode(*inputs).image_embed, trained.encode(*inputs).image_embed
    assert fresh.adapter_file == str(path)
    assert not torch.equal(before, want)
    assert torch.equal(after, want)


def test_adapter_file_carries_its_depth_normalisation(tmp_path):
    """A model built for an adapter file sees depth as the weights were trained to; files from
    before the field existed were all trained on the linear default."""
    log = DepthConfig(min_m=0.15, max_m=6.0, scale="log")
    path = save_adapter(build_m4sam("test", image_size=SIZE, depth=log), tmp_path / "adapter.pt")
    assert load_m4sam(adapter=path).config.depth == log
    payload = torch.load(path, weights_only=True)
    del payload["config"]["depth"]
    torch.save(payload, tmp_path / "earlier.pt")
    assert load_m4sam(adapter=tmp_path / "earlier.pt").config.depth == DepthConfig()


def test_two_stage_depth_head_of_earlier_files_loads_under_its_new_key(tmp_path):
    """Adapter files written before the depth head became a chain name its one stride-16 conv
    ``depth_levels.down``; they load as the first link, to the same numbers."""
    trained = build_m4sam("test", image_size=SIZE, seed=0, depth_stages=2)
    with torch.no_grad():
        trained.adapter.depth_levels.down[0].weight.normal_()
    path = save_adapter(trained, tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    for name in ("weight", "bias"):
        payload["state_dict"][f"adapter.depth_levels.down.{name}"] = payload["state_dict"].pop(
            f"adapter.depth_levels.down.0.{name}")
    torch.save(payload, path)
    fresh = build_m4sam("test", image_size=SIZE, seed=1, depth_stages=2)
    load_adapter(fresh, path)
    assert torch.equal(fresh.adapter.depth_levels.down[0].weight, trained.adapter.depth_levels.down[0].weight)


def test_adapter_loads_at_another_image_size(tmp_path):
    path = save_adapter(build_m4sam("test", image_size=SIZE), tmp_path / "adapter.pt")
    load_adapter(build_m4sam("test", image_size=128), path)  # input size is a runtime setting


def test_adapter_with_mismatched_config_is_refused(tmp_path):
    path = save_adapter(build_m4sam("test", image_size=SIZE, lora_rank=4), tmp_path / "rank4.pt")
    with pytest.raises(CheckpointError, match=r"lora_rank: model=2, file=4"):
        load_adapter(build_m4sam("test", image_size=SIZE), path)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    """Eight 0xFF bytes in a tensor's data are a NaN: refused at load, not served silently."""
    model = build_m4sam("test", image_size=SIZE, seed=0)
    path = save_adapter(model, tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    name = sorted(payload["state_dict"])[3]
    payload["state_dict"][name].view(-1)[:2] = float("nan")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"non-finite.*{name}"):
        load_adapter(build_m4sam("test", image_size=SIZE, seed=0), path)
    state = {k: model.state_dict()[k].clone() for k in model.frozen_keys()}
    key = sorted(state)[0]
    state[key].view(-1)[0] = float("inf")
    torch.save({"model": state}, tmp_path / "sam2.pt")
    with pytest.raises(CheckpointError, match=f"non-finite.*{key}"):
        load_sam2_checkpoint(model, tmp_path / "sam2.pt")


@pytest.mark.parametrize("version", [1, 2])
def test_adapter_files_of_the_earlier_encoder_are_refused_with_the_reason(tmp_path, version):
    model = build_m4sam("test", image_size=SIZE)
    path = save_adapter(model, tmp_path / "adapter.pt")
    payload = torch.load(path, weights_only=True)
    torch.save(dict(payload, version=version), path)
    with pytest.raises(CheckpointError, match=f"version {version}: weights of M4-SAM's earlier encoder.*retrain"):
        load_adapter(model, path)
