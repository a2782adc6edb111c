"""M4-SAM modules on the tiny ``test`` preset (CPU, 64 px): shapes, adapters, router, fusion,
frozen split, missing modalities, presets against sam2's own yaml configs, ONNX export."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.utils import window_partition, window_unpartition

from m4sam_ros.model import M4SAMConfig, build_m4sam, parameter_counts, preset_config
from m4sam_ros.model.adapters import current_routing, routing
from m4sam_ros.model.adapters.fusion import GatedMultiLevelFusion
from m4sam_ros.model.adapters.moe_lora import ExpertRouter, ModalityDispatcher
from m4sam_ros.model.m4sam import M4SAM, TRAINABLE_PREFIXES, modality_dropout

SIZE = 64



@pytest.fixture(scope="module")
def model():
    return build_m4sam("test", image_size=SIZE, seed=0)


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    depth = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    return rgb, depth, torch.ones(batch, 2)


def _perturb_trainable(model, seed: int = 1) -> None:
    """Give adapters and fusion non-trivial weights (fresh ones are exact identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(TRAINABLE_PREFIXES):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_encode_shapes_and_finite(model):
    rgb, depth, present = _inputs(batch=2)
    with torch.no_grad():
        out = model.encode(rgb, depth, present)
    c = model.config.d_model
    assert out.image_embed.shape == (2, c, SIZE // 16, SIZE // 16)
    assert out.high_res_s4.shape == (2, c // 8, SIZE // 4, SIZE // 4)
    assert out.high_res_s8.shape == (2, c // 4, SIZE // 8, SIZE // 8)
    assert out.pos_enc.shape == (2, c, SIZE // 16, SIZE // 16)
    assert all(torch.isfinite(t).all() for t in out)


def test_encode_rejects_bad_shapes(model):
    rgb, depth, present = _inputs(batch=1)
    with pytest.raises(ValueError, match="encode expects rgb and depth"):
        model.encode(rgb[:, :, :32], depth, present)
    with pytest.raises(ValueError, match="modality_present"):
        model.encode(rgb, depth, torch.ones(1, 3))


def test_fresh_adapters_are_identity():
    """With zero-init experts the trunk computes exactly what SAM2's plain Hiera computes."""
    model = build_m4sam("test", image_size=SIZE, seed=0)
    cfg = model.config
    plain = Hiera(embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, stages=cfg.stages,
                  global_att_blocks=cfg.global_att_blocks, window_spec=cfg.window_spec,
                  window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size).eval()
    plain.load_state_dict(model.image_encoder.trunk.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        adapted, reference = model.image_encoder.trunk(x), plain(x)
    assert all(torch.equal(a, b) for a, b in zip(adapted, reference))
    # and once trained (non-zero), the adapters do change the features
    _perturb_trainable(model)
    with torch.no_grad():
        changed = model.image_encoder.trunk(x)
    assert not torch.allclose(changed[0], reference[0])


def test_dispatcher_sends_each_half_to_its_modality_group():
    """Changing the depth experts changes only the depth half of the trunk batch."""
    model = build_m4sam("test", image_size=SIZE, seed=0)
    _perturb_trainable(model)
    x = torch.randn(2, 3, SIZE, SIZE)  # sample 0 = RGB, sample 1 = depth
    with torch.no_grad():
        before = model.image_encoder.trunk(x)[-1]
        for dispatcher in model.adapter.moe_lora:
            dispatcher.depth.up.weight.mul_(3.0)
        after = model.image_encoder.trunk(x)[-1]
    assert torch.equal(before[0], after[0])
    assert not torch.allclose(before[1], after[1])
    with pytest.raises(ValueError, match="pair routing needs B RGB"), torch.no_grad():
        model.forward_image(x[:1])  # SAM2Base's own entry point, one image: neither modality's half


def test_router_top_k_weights_sum_to_one():
    router = ExpertRouter(dim=16, num_experts=4, top_k=2)
    weights = router(torch.randn(5, 16))  # pooled tokens (B, C) -> (B, E)
    assert weights.shape == (5, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(5))
    assert ((weights > 0).sum(-1) == 2).all()
    assert (weights >= 0).all()


def test_router_is_per_modality_and_per_sample(model):
    dispatcher = model.adapter.moe_lora[0]
    assert dispatcher.rgb.router is not dispatcher.depth.router
    tokens = torch.randn(3, dispatcher.rgb.router.proj.in_features)  # pooled, one per sample
    w_rgb, w_depth = dispatcher.rgb.router(tokens), dispatcher.depth.router(tokens)
    assert w_rgb.shape == (3, model.config.adapter.experts_per_modality)
    assert not torch.allclose(w_rgb, w_depth)
    # per sample: a sample's weights do not depend on the others in the batch
    assert torch.allclose(dispatcher.rgb.router(tokens[:1]), w_rgb[:1])


def _expert_by_expert(group, x: torch.Tensor) -> torch.Tensor:
    """One group's mixture on the full grid x (B, H, W, C), written out one expert at a time,
    each with its own k x k kernel: what the batched dispatcher must add."""
    rank, weights = group.rank, group.router(x.mean(dim=(1, 2)))
    out = torch.zeros(*x.shape[:3], group.up.out_features)
    for expert in range(weights.shape[1]):
        rows = slice(expert * rank, (expert + 1) * rank)
        support = group.kernel_mask[rows.start, 0].sum().sqrt().int().item()
        offset = (group.conv.kernel_size[0] - support) // 2
        kernel = group.conv.weight[rows, :, offset:offset + support, offset:offset + support]
        h = x @ group.down.weight[rows].T
        h = torch.nn.functional.conv2d(h.permute(0, 3, 1, 2), kernel, padding=support // 2,
                                       groups=1 if group.conv.groups < rank * weights.shape[1] else rank)
        h = torch.nn.functional.gelu(h).permute(0, 2, 3, 1)
        out = out + weights[:, expert, None, None, None] * (h @ group.up.weight[:, rows].T)
    return out


@pytest.mark.parametrize("expert_conv", ["full", "depthwise"])
@pytest.mark.parametrize("window_size, grid", [(0, 8), (4, 8), (4, 10)])
def test_dispatcher_adds_the_expert_by_expert_mixture_of_each_half(expert_conv, window_size, grid):
    """The batched dispatcher adds exactly the per-expert mixtures: RGB + shared experts on the
    RGB half, depth + shared experts on the depth half (routing "rgb": RGB + shared on all),
    each expert keeping its own neighbourhood (kernel sizes 1, 3, 5 under one mask), in a
    global block and in windowed ones, padded windows included (grid 10, windows of 4)."""
    config = preset_config("test", expert_conv=expert_conv).adapter
    dispatcher = ModalityDispatcher(12, 36, window_size, grid, config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights outside the kernel masks too: they must play no part
        for p in dispatcher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    group = dispatcher.rgb
    assert [group.kernel_mask[e * group.rank, 0].sum().sqrt().item() for e in range(3)] == [1.0, 3.0, 5.0]
    x, qkv = torch.randn(4, grid, grid, 12, generator=g), torch.randn(4, grid, grid, 36, generator=g)
    mixture = {name: lambda t, name=name: _expert_by_expert(getattr(dispatcher, name), t)
               for name in ("rgb", "depth", "shared")}
    cases = {"pair": (x, torch.cat([mixture["rgb"](x[:2]) + mixture["shared"](x[:2]),
                                    mixture["depth"](x[2:]) + mixture["shared"](x[2:])])),
             "rgb": (x, mixture["rgb"](x) + mixture["shared"](x))}
    for mode, (tokens, update) in cases.items():
        with routing(mode), torch.no_grad():
            if window_size:
                windows, padded = window_partition(tokens, window_size)
                out = dispatcher(windows, window_partition(qkv, window_size)[0])
                out = window_unpartition(out, window_size, padded, (grid, grid))
            else:
                out = dispatcher(tokens, qkv.clone())
        torch.testing.assert_close(out, qkv + update, rtol=1e-5, atol=1e-5, msg=mode)


@pytest.mark.parametrize("depth_stages", [1, 2, 3])
def test_depth_runs_only_the_early_stages(depth_stages):
    """Depth enters the trunk's first ``depth_stages`` stages only: depth experts of later blocks
    play no part, those of early blocks do, and the RGB path stays SAM2's trunk with RGB experts.
    Its head makes the levels it has no stage for, in the decoder's widths."""
    model = M4SAM(preset_config("test", image_size=SIZE, depth_stages=depth_stages)).eval()
    _perturb_trainable(model)
    rgb, depth, present = _inputs(batch=1)
    split = model.image_encoder.trunk.stage_ends[depth_stages - 1]
    assert len(model.adapter.depth_levels.down) == 3 - depth_stages
    with torch.no_grad():
        before = model.encode(rgb, depth, present)
        for dispatcher in model.adapter.moe_lora[split + 1:]:
            dispatcher.depth.up.weight.mul_(3.0)
        assert all(torch.equal(a, b) for a, b in zip(before, model.encode(rgb, depth, present)))
        model.adapter.moe_lora[0].depth.up.weight.mul_(3.0)
        assert not torch.allclose(model.encode(rgb, depth, present).image_embed, before.image_embed)


def test_fusion_gate_collapses_to_the_present_modality():
    fusion = GatedMultiLevelFusion(widths=(4, 8, 16), kernel_sizes=(3, 3, 1), gate_init_bias=0.0,
                                   topdown_init_bias=0.0)
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_(0, 0.3)
    rgb = [torch.randn(3, c, s, s) for c, s in ((4, 16), (8, 8), (16, 4))]
    depth = [torch.randn(3, c, s, s) for c, s in ((4, 16), (8, 8), (16, 4))]
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # both, RGB only, depth only
    gate = fusion.cross_modal[2].gate(rgb[2], depth[2], present)
    assert ((gate[0] > 0) & (gate[0] < 1)).all()
    assert torch.equal(gate[1], torch.ones_like(gate[1]))
    assert torch.equal(gate[2], torch.zeros_like(gate[2]))
    fused = fusion(rgb, depth, present)
    assert [f.shape for f in fused] == [r.shape for r in rgb]
    # coarsest level has no top-down input: RGB-only / depth-only samples are the modality itself
    assert torch.equal(fused[2][1], rgb[2][1]) and torch.equal(fused[2][2], depth[2][2])
    # finer levels get a gated top-down contribution from the coarser one
    assert not torch.allclose(fused[0][1], rgb[0][1])
    with pytest.raises(ValueError, match=r"widths \(4, 8, 16\)"):
        fusion(rgb[::-1], depth, present)


def test_rgb_only_and_depth_only_encode(model):
    rgb, depth, _ = _inputs(batch=1)
    with torch.no_grad():
        both = model.encode(rgb, depth, torch.tensor([[1.0, 1.0]]))
        rgb_only = model.encode(rgb, depth, torch.tensor([[1.0, 0.0]]))
        rgb_zero_depth = model.encode(rgb, torch.zeros_like(depth), torch.tensor([[1.0, 0.0]]))
        depth_only = model.encode(rgb, depth, torch.tensor([[0.0, 1.0]]))
    for out in (rgb_only, depth_only):
        assert all(torch.isfinite(t).all() for t in out)
    # the missing modality's input is ignored entirely
    assert torch.equal(rgb_only.image_embed, rgb_zero_depth.image_embed)
    assert not torch.allclose(rgb_only.image_embed, depth_only.image_embed)
    assert not torch.allclose(both.image_embed, rgb_only.image_embed)


def test_encode_rgb_equals_encode_without_depth_and_uses_rgb_experts_only():
    """The one-modality pass gives what the pair pass gives with depth absent, and depth
    experts play no part in it."""
    model = build_m4sam("test", image_size=SIZE, seed=0)
    _perturb_trainable(model)
    rgb, depth, _ = _inputs(batch=2)
    with torch.no_grad():
        pair = model.encode(rgb, depth, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        single = model.encode_rgb(rgb)
        for name, a, b in zip(pair._fields, pair, single):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
        assert current_routing() == "pair"  # routing restored after the pass
        for dispatcher in model.adapter.moe_lora:
            dispatcher.depth.up.weight.mul_(3.0)
        model.adapter.depth_levels.project[0].weight.mul_(3.0)
        assert torch.equal(model.encode_rgb(rgb).image_embed, single.image_embed)
        for dispatcher in model.adapter.moe_lora:
            dispatcher.rgb.up.weight.mul_(3.0)
        assert not torch.allclose(model.encode_rgb(rgb).image_embed, single.image_embed)
    with pytest.raises(ValueError, match="encode_rgb expects rgb"):
        model.encode_rgb(rgb[:, :2])


def test_encode_sam2_is_sam2s_own_image_encoder():
    """Zero-shot features are exactly plain SAM2's, however the adapters and fusion are set."""
    from sam2.modeling.sam2_base import SAM2Base
    from m4sam_ros.model.m4sam import sam2_modules

    model = build_m4sam("test", image_size=SIZE, seed=0)
    _perturb_trainable(model)
    sam2 = SAM2Base(**sam2_modules(model.config)).eval()
    sam2.load_state_dict({k: v for k, v in model.state_dict().items() if k in model.frozen_keys()})
    rgb, _, _ = _inputs(batch=2)
    with torch.no_grad():
        ours = model.encode_sam2(rgb)
        backbone = sam2.forward_image(rgb)
        _, features, positions, _ = sam2._prepare_backbone_features(backbone)
    h = SIZE // 16
    image_embed = features[-1].permute(1, 2, 0).reshape(2, -1, h, h)
    assert torch.equal(ours.image_embed, image_embed)
    assert torch.equal(ours.high_res_s4, backbone["backbone_fpn"][0])  # forward_image applies conv_s0
    assert torch.equal(ours.high_res_s8, backbone["backbone_fpn"][1])
    assert torch.equal(ours.pos_enc, positions[-1].permute(1, 2, 0).reshape(2, -1, h, h))
    assert current_routing() == "pair"


def test_only_adapters_and_fusion_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(TRAINABLE_PREFIXES) for n in trainable)
    assert any(n.startswith("adapter.moe_lora.") for n in trainable) and any(n.startswith("adapter.fusion.") for n in trainable)
    counts = parameter_counts(model)
    assert counts["trainable"] == counts["moe_lora"] + counts["depth_levels"] + counts["fusion"] > 0
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # gradients reach the adapters through the frozen trunk
    trained = copy.deepcopy(model).train()
    _perturb_trainable(trained)
    rgb, depth, present = _inputs(batch=1)
    trained.encode(rgb, depth, present).image_embed.square().mean().backward()
    grads = {n: p.grad for n, p in trained.named_parameters() if p.grad is not None}
    assert any(n.startswith("adapter.moe_lora.") for n in grads) and any(n.startswith("adapter.fusion.") for n in grads)
    assert all(n.startswith(TRAINABLE_PREFIXES) for n in grads)


def test_modality_dropout_never_drops_both():
    present = torch.ones(2000, 2)
    kept = modality_dropout(present, 0.3, 0.2, generator=torch.Generator().manual_seed(0))
    assert (kept.sum(1) >= 1).all()
    assert abs((kept[:, 1] == 0).float().mean().item() - 0.3) < 0.05
    assert abs((kept[:, 0] == 0).float().mean().item() - 0.2) < 0.05
    depth_missing = torch.tensor([[1.0, 0.0]]).repeat(100, 1)
    assert torch.equal(modality_dropout(depth_missing, 0.5, 0.5), depth_missing)  # RGB is all there is


def test_encode_is_deterministic(model):
    rgb, depth, present = _inputs(batch=1)
    with torch.no_grad():
        a = model.encode(rgb, depth, present)
        b = build_m4sam("test", image_size=SIZE, seed=0).encode(rgb, depth, present)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_prompt_free_decode_and_memory_encode(model):
    rgb, depth, present = _inputs(batch=1)
    with torch.no_grad():
        frame = model.encode(rgb, depth, present)
        pix = model.condition_on_memory(frame, None)
        # no memory: SAM2's no-memory embedding is added directly
        assert torch.allclose(pix, frame.image_embed + model.no_mem_embed.view(1, -1, 1, 1))
        out = model.decode(pix, frame, is_init_frame=True)
        features, pos = model.encode_memory(frame, out)
    assert out.low_res_logits.shape == (1, 1, SIZE // 4, SIZE // 4)
    assert out.high_res_logits.shape == (1, 1, SIZE, SIZE)
    assert out.obj_ptr.shape == (1, model.config.d_model) and out.object_score_logits.shape == (1, 1)
    assert features.shape == pos.shape == (1, model.config.mem_dim, SIZE // 16, SIZE // 16)
    assert out.aux_logits == ()  # M4-SAM makes no intermediate predictions
    assert all(torch.isfinite(t).all() for t in (*out[:4], features, pos))


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        preset_config("test", image_size=100)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("hiera_xl")
    with pytest.raises(ValueError, match="unknown M4SAMConfig overrides"):
        preset_config("test", lora_rnak=4)
    with pytest.raises(ValueError, match="router_top_k"):
        preset_config("test", router_top_k=5)
    with pytest.raises(ValueError, match="odd"):
        preset_config("test", expert_kernel_sizes=(2,))
    with pytest.raises(ValueError, match="depth_stages must be one of"):
        preset_config("test", depth_stages=4)
    with pytest.raises(ValueError, match="fusion_kernel_sizes"):
        preset_config("test", fusion_kernel_sizes=(3, 3))
    cfg = preset_config("test", image_size=128, lora_rank=4)
    assert M4SAMConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", ["hiera_t", pytest.param("hiera_s", marks=pytest.mark.slow),
                                    pytest.param("hiera_b+", marks=pytest.mark.slow),
                                    pytest.param("hiera_l", marks=pytest.mark.slow)])
def test_presets_match_sam2_yaml(preset):
    """The frozen part has exactly the keys and shapes of sam2's own build from its yaml."""
    from sam2.build_sam import build_sam2  # the reference: sam2's hydra build of the official config

    size = preset.split("_")[1]
    reference = build_sam2(f"configs/sam2.1/sam2.1_hiera_{size}.yaml", ckpt_path=None, device="cpu")
    ours = build_m4sam(preset, image_size=512)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    state = ours.state_dict()
    our_shapes = {k: tuple(state[k].shape) for k in ours.frozen_keys()}
    assert our_shapes == ref_shapes


@pytest.mark.slow
def test_encode_exports_to_onnx_and_matches_torch(tmp_path):
    """The stateless encoder (with adapters and fusion) exports as is and runs in ONNX Runtime."""
    import onnxruntime as ort

    model = build_m4sam("test", image_size=SIZE, seed=0)
    _perturb_trainable(model)
    rgb, depth, _ = _inputs(batch=1)
    present = torch.tensor([[1.0, 0.0]])
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(model, (rgb, depth, present), str(path), dynamo=True,
                      input_names=["rgb", "depth", "modality_present"],
                      output_names=["image_embed", "high_res_s4", "high_res_s8", "pos_enc"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    present_np = np.array([[1.0, 1.0]], dtype=np.float32)  # another presence than at export time
    outputs = session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy(), "modality_present": present_np})
    with torch.no_grad():
        reference = model.encode(rgb, depth, torch.from_numpy(present_np))
    for got, want in zip(outputs, reference):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
