"""M4-SAM's adapter: modality-aware mixture of conv-LoRA experts, a short depth branch, gated fusion.

RGB and depth share one frozen Hiera. Each block gets a low-rank update of its ``qkv``
projection whose bottleneck is a k x k conv over the block's full (H, W) token grid, so the
adapter sees local spatial context that a linear LoRA cannot (depth edges, object
boundaries). A dispatcher sends the RGB half of the batch to the RGB experts and the depth
half to the depth experts (plus, optionally, every sample to shared experts); inside a
group a per-sample router weights the experts. The routing (``adapters.base``) says what
the batch holds: "pair", "rgb" or "off".

Where this differs from the paper, and why (measured with ``m4sam cost``): the paper sends
depth through the whole trunk and fuses the 256-channel FPN levels, 2.45x SAM2's FLOPs per
frame at hiera_t 512². Here depth runs only the first ``depth_stages`` stages (as a batch
of two with RGB; by default one, 1.08x SAM2's FLOPs: a second stage added 60-80 ms of eager
CPU time at hiera_t 512², which kept PyTorch under 0.8 of SAM2's speed), RGB continues
alone, a light head (``DepthLevels``) maps depth's stage outputs to the widths SAM2's
decoder reads, and the gated fusion works there (``fusion.py``). All experts a sample uses
(its modality's and the shared ones) run as three batched operations per block, not one
chain per expert: far fewer graph nodes for ONNX Runtime and TensorRT, and in PyTorch a
sixth of the eager cost of per-group calls.

The update is added by one forward hook on ``attn.qkv``, so the frozen SAM2 modules and
their state-dict keys stay untouched and an official checkpoint loads strictly. The hook
sees what ``qkv`` sees - the block's normalised tokens, in windows for windowed blocks -
projects them down, undoes the windowing of the narrow result (a pure reshape, the grid
side is fixed by the model's input size), convolves on the full grid, windows it back and
accumulates the up projection into qkv's output. Everything is tensor arithmetic with
static shapes: no data-dependent branches, so the encoder exports to ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

from m4sam_ros.model.adapters.base import Adapter, AdapterConfig, TrunkGeometry, current_routing, routing
from m4sam_ros.model.adapters.fusion import GatedMultiLevelFusion
from m4sam_ros.model.features import EncodedFrame
from m4sam_ros.model.trunk import embed, run_stages

if TYPE_CHECKING:
    from m4sam_ros.model.m4sam import M4SAM

EXPERT_CONVS = ("full", "depthwise")
FUSION_LEVELS = 3  # strides 4, 8, 16: what SAM2's decoder reads (its scalp=1 drops stride 32)
DEPTH_STAGES = (1, 2, 3)  # stage 4 (stride 32) is never read by SAM2's decoder


@dataclass(frozen=True)
class MoELoRAConfig(AdapterConfig):
    """MoE-LoRA: lora_rank, experts_per_modality, expert_kernel_sizes (cycled over the experts,
    so experts of one group see different neighbourhoods), expert_conv ("full" r->r conv or
    "depthwise"), router_top_k, shared_experts (0 = no shared group), lora_scale (multiplies
    the adapter update).
    Depth branch: depth_stages, the Hiera stages depth runs through (1 to 3 of 4; stage 4 is
    stride 32, which SAM2's decoder never reads).
    Fusion: fusion_kernel_sizes per level (strides 4, 8, 16), fusion_gate_init_bias (the
    cross-modal gate starts at sigmoid(bias) toward RGB, the modality SAM2 was trained on),
    topdown_gate_init_bias (the top-down gate starts nearly closed so a fresh model stays
    close to SAM2)."""

    kind: ClassVar[str] = "moe_lora"

    lora_rank: int = 8
    experts_per_modality: int = 3
    expert_kernel_sizes: tuple[int, ...] = (1, 3, 5)
    expert_conv: str = "full"
    router_top_k: int = 2
    shared_experts: int = 1
    lora_scale: float = 1.0
    depth_stages: int = 1
    fusion_kernel_sizes: tuple[int, ...] = (3, 3, 1)
    fusion_gate_init_bias: float = 2.0
    topdown_gate_init_bias: float = -4.0

    def __post_init__(self) -> None:
        if self.expert_conv not in EXPERT_CONVS:
            raise ValueError(f"expert_conv must be one of {EXPERT_CONVS}, got {self.expert_conv!r}")
        if self.lora_rank < 1 or self.experts_per_modality < 1 or self.shared_experts < 0:
            raise ValueError("lora_rank and experts_per_modality must be >= 1 and shared_experts >= 0, got "
                             f"{self.lora_rank}, {self.experts_per_modality}, {self.shared_experts}")
        if not self.expert_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.expert_kernel_sizes):
            raise ValueError(f"expert_kernel_sizes must be odd and >= 1 (same-size conv), "
                             f"got {self.expert_kernel_sizes}")
        if not 1 <= self.router_top_k <= self.experts_per_modality:
            raise ValueError(f"router_top_k must be in [1, experts_per_modality={self.experts_per_modality}], "
                             f"got {self.router_top_k}")
        if len(self.fusion_kernel_sizes) != FUSION_LEVELS or any(k < 1 or k % 2 == 0 for k in self.fusion_kernel_sizes):
            raise ValueError(f"fusion_kernel_sizes must be {FUSION_LEVELS} odd sizes >= 1 (strides 4, 8, 16), "
                             f"got {self.fusion_kernel_sizes}")
        if self.depth_stages not in DEPTH_STAGES:
            raise ValueError(f"depth_stages must be one of {DEPTH_STAGES} (Hiera stages depth runs through), "
                             f"got {self.depth_stages}")

    def kernel_size_of_expert(self, index: int) -> int:
        return self.expert_kernel_sizes[index % len(self.expert_kernel_sizes)]


class ExpertRouter(nn.Module):
    """Per-sample expert weights from the sample's pooled tokens: softmax, top-k kept and renormalised.

    Top-k keeps the weights at or above the k-th largest (not a Python loop over chosen
    experts), so all experts run and the graph is the same for every input.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.proj = nn.Linear(dim, num_experts)
        self.top_k = top_k

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C) mean token of each sample -> (B, E)."""
        weights = self.proj(pooled).softmax(dim=-1)
        if self.top_k < weights.shape[-1]:
            kth = weights.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            weights = torch.where(weights >= kth, weights, torch.zeros_like(weights))
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights


class ExpertGroup(nn.Module):
    """The conv-LoRA experts of one modality (or the shared ones) and their router.

    Expert e is down (C_in -> r) -> k_e x k_e conv on the token grid -> GELU -> up (r -> C_out),
    weighted by the router. The E experts are one down projection to E*r channels, one
    grouped conv (group e = expert e; its k_e x k_e kernel sits in the group's largest
    kernel under a fixed mask, so each expert keeps its own neighbourhood) and one up
    projection from the router-weighted E*r channels; the dispatcher runs the groups a
    sample uses together. ``up`` starts at zero, so a fresh group adds exactly nothing.
    """

    def __init__(self, dim_in: int, dim_out: int, num_experts: int, config: MoELoRAConfig):
        super().__init__()
        rank, kernels = config.lora_rank, [config.kernel_size_of_expert(i) for i in range(num_experts)]
        channels, size = num_experts * rank, max(kernels)
        self.router = ExpertRouter(dim_in, num_experts, min(config.router_top_k, num_experts))
        self.down = nn.Linear(dim_in, channels, bias=False)
        self.conv = nn.Conv2d(channels, channels, size, padding=size // 2, bias=False,
                              groups=channels if config.expert_conv == "depthwise" else num_experts)
        self.up = nn.Linear(channels, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)
        mask = torch.zeros(channels, 1, size, size)
        for expert, kernel in enumerate(kernels):
            offset = (size - kernel) // 2
            mask[expert * rank:(expert + 1) * rank, :, offset:offset + kernel, offset:offset + kernel] = 1.0
        self.register_buffer("kernel_mask", mask, persistent=False)
        # (E,) router weights -> (E*r,) channel weights, as a matmul: no shape arithmetic in the graph
        self.register_buffer("spread", torch.eye(num_experts).repeat_interleave(rank, dim=1), persistent=False)
        with torch.no_grad():
            self.conv.weight.mul_(mask)  # the stored weights are the ones in use
        self.rank = rank

    def channel_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C_in) pooled tokens -> (B, E*r): each expert's router weight on its r channels."""
        weights = self.router(pooled)
        return weights @ self.spread.to(weights.dtype)

    def kernel(self, size: int) -> torch.Tensor:
        """The experts' masked conv weight, zero-padded to ``size`` x ``size`` (the same conv)."""
        # the mask is a buffer, which an fp16 graph keeps in fp32: used in the weights' dtype
        kernel = self.conv.weight * self.kernel_mask.to(self.conv.weight.dtype)
        pad = (size - kernel.shape[-1]) // 2
        return F.pad(kernel, (pad, pad, pad, pad)) if pad else kernel


class ModalityDispatcher(nn.Module):
    """MoE-LoRA update of one Hiera block's qkv.

    Routing "pair": the batch is 2B samples, the first B go to the RGB experts, the last B
    to the depth experts; "rgb": the batch is B RGB samples, all to the RGB experts; "off":
    no update. Shared experts see every sample.

    The batch is split into *segments* (pair: RGB, depth; rgb: one), each with its own
    experts, and a segment's groups run as one: down projections as one batched matmul, the
    convs as one grouped conv (segments folded into channels), and the up projections as one
    batched matmul accumulated into qkv's output in place. Linear maps commute with the
    windowing, so only the narrow E*r-channel bottleneck is moved between the block's
    windows and the full grid the conv needs; the wide qkv output is written once.
    """

    def __init__(self, dim_in: int, dim_out: int, window_size: int, grid: int, config: MoELoRAConfig):
        super().__init__()
        self.rgb = ExpertGroup(dim_in, dim_out, config.experts_per_modality, config)
        self.depth = ExpertGroup(dim_in, dim_out, config.experts_per_modality, config)
        self.shared = ExpertGroup(dim_in, dim_out, config.shared_experts, config) if config.shared_experts else None
        self.scale = config.lora_scale
        self.window_size = window_size
        self.grid = (grid, grid)  # the block's input token grid (H, W)
        padded = -(-grid // window_size) * window_size if window_size > 0 else grid
        self.padded = (padded, padded)

    def segments(self, routing: str) -> list[list[ExpertGroup]]:
        """The expert groups of each segment of the batch under ``routing`` ("pair" or "rgb")."""
        shared = [self.shared] if self.shared is not None else []
        if routing == "rgb":
            return [[self.rgb, *shared]]
        return [[self.rgb, *shared], [self.depth, *shared]]

    def forward(self, tokens: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """Add the update to ``qkv`` in place and return it. ``tokens`` (C_in) and ``qkv``
        (C_out) in the block's layout: (B * windows, ws, ws, C) in a windowed block (zero
        padding included), else (B, H, W, C)."""
        segments = self.segments(current_routing())
        count, (height, width) = len(segments), self.grid
        windows = (self.padded[0] // self.window_size) ** 2 if self.window_size > 0 else 1
        batch = tokens.shape[0] // windows  # shapes, not values: static under tracing
        if batch % count:
            raise ValueError(f"MoE-LoRA pair routing needs B RGB + B depth samples, got a batch of {batch}; "
                             "encode one modality with M4SAM.encode_rgb or encode_sam2")
        dim_in, per_segment = tokens.shape[-1], batch // count
        # routers: each sample's mean token (padding is zero), summed in fp32 (an fp16 sum overflows)
        pooled = (tokens.reshape(count, per_segment, -1, dim_in).float().sum(2) / (height * width)).to(tokens.dtype)
        weights = torch.stack([torch.cat([g.channel_weights(p) for g in groups], dim=1)
                               for groups, p in zip(segments, pooled)])  # (S, B, K)
        down, kernel, conv_groups, up = self._packed(segments)
        channels, size = down.shape[1], kernel.shape[-1]

        h = torch.bmm(tokens.reshape(count, -1, dim_in), down.transpose(1, 2))  # (S, N, K)
        if self.window_size > 0:
            h = window_unpartition(h.reshape(-1, self.window_size, self.window_size, channels), self.window_size,
                                   self.padded, self.grid)
        # channels last, a sample's segments side by side: a view unless the batch holds a pair
        h = h.reshape(count, per_segment, height, width, channels).permute(1, 2, 3, 0, 4)
        h = h.reshape(per_segment, height, width, count * channels).permute(0, 3, 1, 2)
        h = F.conv2d(h, kernel, padding=size // 2, groups=conv_groups)  # keeps the channels-last layout
        h = F.gelu(h) * weights.to(h.dtype).transpose(0, 1).reshape(per_segment, -1)[:, :, None, None]
        h = h.permute(0, 2, 3, 1).reshape(per_segment, height, width, count, channels).permute(3, 0, 1, 2, 4)
        h = h.reshape(batch, height, width, channels)
        if self.window_size > 0:
            h, _ = window_partition(h, self.window_size)
        # in place: a fresh tensor of qkv's size costs more than the update (page faults on CPU);
        # in qkv's dtype, which autocast would not keep for an in-place op; and the traced graph
        # must read the op's result, not the mutated view
        with torch.autocast(qkv.device.type, enabled=False):
            out = qkv.view(count, -1, qkv.shape[-1]).baddbmm_(
                h.reshape(count, -1, channels).to(qkv.dtype), up.transpose(1, 2).to(qkv.dtype), alpha=self.scale)
        return out.view_as(qkv)

    @staticmethod
    def _packed(segments: list[list[ExpertGroup]]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """Each segment's groups as one: down (S, K, C_in), the conv kernel (S*K, K_in, k, k) with
        its group count, up (S, C_out, K); K = the segment's expert channels."""
        down = torch.stack([torch.cat([g.down.weight for g in groups]) for groups in segments])
        up = torch.stack([torch.cat([g.up.weight for g in groups], dim=1) for groups in segments])
        size = max(g.conv.kernel_size[0] for g in segments[0])
        kernel = torch.cat([g.kernel(size) for groups in segments for g in groups])
        return down, kernel, sum(g.conv.groups for groups in segments for g in groups), up

    def on_qkv(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of ``attn.qkv``: its input tokens and output, in the block's layout."""
        if current_routing() == "off":
            return output
        return self(inputs[0], output)


class DepthLevels(nn.Module):
    """Depth's three feature levels from its stage outputs, in the widths SAM2's decoder reads:
    a 1x1 projection of each stage output it has (stride 4, then 8 and 16 with more stages),
    and for each level beyond them a stride-2 3x3 conv of the level before (the last stage's
    output for the first such level, its finer level's features after that)."""

    def __init__(self, stage_widths: list[int], decoder_widths: tuple[int, ...]):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c_in, c_out, 1) for c_in, c_out in zip(stage_widths, decoder_widths))
        missing = range(len(stage_widths), len(decoder_widths))
        self.down = nn.ModuleList(
            nn.Conv2d(stage_widths[-1] if level == len(stage_widths) else decoder_widths[level - 1],
                      decoder_widths[level], 3, stride=2, padding=1) for level in missing)

    def forward(self, stage_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [project(x) for project, x in zip(self.project, stage_outputs)]
        coarser = stage_outputs[-1]
        for down in self.down:
            coarser = down(coarser)
            levels.append(coarser)
        return levels


class MoELoRA(Adapter):
    """One dispatcher per Hiera block, the depth branch's head and the gated fusion."""

    kind = MoELoRAConfig.kind
    method = "M4-SAM"
    config_type = MoELoRAConfig

    def __init__(self, config: MoELoRAConfig, geometry: TrunkGeometry):
        super().__init__(config)
        blocks = geometry.trunk.blocks
        self.moe_lora = nn.ModuleList(
            ModalityDispatcher(block.dim, 3 * block.dim_out, block.window_size, grid, config)
            for block, grid in zip(blocks, geometry.block_input_sizes()))
        self.depth_levels = DepthLevels(geometry.stage_widths[:config.depth_stages], geometry.decoder_widths)
        self.fusion = GatedMultiLevelFusion(geometry.decoder_widths, config.fusion_kernel_sizes,
                                            config.fusion_gate_init_bias, config.topdown_gate_init_bias)

    def attach(self, geometry: TrunkGeometry) -> None:
        for block, dispatcher in zip(geometry.trunk.blocks, self.moe_lora):
            block.attn.qkv.register_forward_hook(dispatcher.on_qkv)

    def encode(self, model: "M4SAM", rgb: torch.Tensor, depth: torch.Tensor,
               modality_present: torch.Tensor) -> EncodedFrame:
        """The early stages on RGB and depth as one batch of two, the rest on RGB alone; depth's
        levels from its early stages; gated fusion at the decoder's widths."""
        trunk, batch, split = model.image_encoder.trunk, rgb.shape[0], self.config.depth_stages
        with routing("pair"):
            tokens, early = run_stages(trunk, embed(trunk, torch.cat([rgb, depth])), range(0, split))
        with routing("rgb"):
            _, late = run_stages(trunk, tokens[:batch], range(split, len(trunk.stage_ends)))
        frame = model.frame_from_stages([x[:batch] for x in early] + late)
        depth_levels = self.depth_levels([x[batch:] for x in early])
        return frame.with_levels(self.fusion(frame.levels, depth_levels, modality_present))

    def encode_rgb(self, model: "M4SAM", rgb: torch.Tensor) -> EncodedFrame:
        with routing("rgb"):
            frame = model.sam2_frame(rgb)
        return frame.with_levels(self.fusion.refine(frame.levels))
