"""M4-SAM's adapter: a modality-aware mixture of convolutional LoRA experts on Hiera's ``qkv``,
and gated multi-level fusion of the two modalities' FPN levels.

RGB and depth share one frozen Hiera (one batch of two: B RGB then B depth). Each block
gets a low-rank update of its ``qkv`` projection whose bottleneck is a k x k conv over the
block's full (H, W) token grid, so the adapter sees local spatial context that a linear
LoRA cannot (depth edges, object boundaries). A dispatcher sends the RGB half of the batch
to the RGB experts and the depth half to the depth experts (plus, optionally, every
sample to shared experts); inside a group a per-sample router weights the experts. The
routing (``adapters.base``) says what the batch holds: "pair", "rgb" or "off".

The update is added by one forward hook on ``attn.qkv``, so the frozen SAM2 modules and
their state-dict keys stay untouched and an official checkpoint loads strictly. The hook
sees what ``qkv`` sees - the block's normalised tokens, in windows for windowed blocks -
undoes the windowing (a pure reshape, the grid side is fixed by the model's input size),
computes the update on the full grid and windows it back. Everything is tensor arithmetic
with static shapes: no data-dependent branches, so the encoder exports to ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

from m4sam_ros.model.adapters.base import Adapter, AdapterConfig, TrunkGeometry, current_routing
from m4sam_ros.model.adapters.fusion import GatedMultiLevelFusion

EXPERT_CONVS = ("full", "depthwise")
FPN_LEVELS = 3  # strides 4, 8, 16 (SAM2's scalp=1 drops stride 32)


@dataclass(frozen=True)
class MoELoRAConfig(AdapterConfig):
    """MoE-LoRA: lora_rank, experts_per_modality, expert_kernel_sizes (cycled over the experts,
    so experts of one group see different neighbourhoods), expert_conv ("full" r->r conv or
    "depthwise"), router_top_k, shared_experts (0 = no shared group), lora_scale (multiplies
    the adapter update).
    Fusion: fusion_kernel_size, fusion_gate_init_bias (the cross-modal gate starts at
    sigmoid(bias) toward RGB, the modality SAM2 was trained on), topdown_gate_init_bias (the
    top-down gate starts nearly closed so a fresh model stays close to SAM2)."""

    kind: ClassVar[str] = "moe_lora"

    lora_rank: int = 8
    experts_per_modality: int = 3
    expert_kernel_sizes: tuple[int, ...] = (1, 3, 5)
    expert_conv: str = "full"
    router_top_k: int = 2
    shared_experts: int = 1
    lora_scale: float = 1.0
    fusion_kernel_size: int = 3
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
        if self.fusion_kernel_size < 1 or self.fusion_kernel_size % 2 == 0:
            raise ValueError(f"fusion_kernel_size must be odd and >= 1, got {self.fusion_kernel_size}")

    def kernel_size_of_expert(self, index: int) -> int:
        return self.expert_kernel_sizes[index % len(self.expert_kernel_sizes)]


class ConvLoRAExpert(nn.Module):
    """down (C_in -> r) -> k x k conv on the token grid -> GELU -> up (r -> C_out).

    ``up`` starts at zero, so a fresh expert adds exactly nothing.
    """

    def __init__(self, dim_in: int, dim_out: int, rank: int, kernel_size: int, depthwise: bool):
        super().__init__()
        self.down = nn.Linear(dim_in, rank, bias=False)
        self.conv = nn.Conv2d(rank, rank, kernel_size, padding=kernel_size // 2,
                              groups=rank if depthwise else 1, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x).permute(0, 3, 1, 2)  # (B, r, H, W)
        h = F.gelu(self.conv(h)).permute(0, 2, 3, 1)  # (B, H, W, r)
        return self.up(h)  # (B, H, W, C_out)


class ExpertRouter(nn.Module):
    """Per-sample expert weights: softmax over pooled tokens, top-k kept and renormalised.

    Top-k is a mask built with ``scatter`` (not a Python loop over chosen experts), so all
    experts run and the graph is the same for every input.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.proj = nn.Linear(dim, num_experts)
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.proj(x.mean(dim=(1, 2))).softmax(dim=-1)  # (B, E)
        if self.top_k < weights.shape[-1]:
            chosen = weights.topk(self.top_k, dim=-1).indices  # (B, k)
            keep = torch.zeros_like(weights).scatter(-1, chosen, 1.0)
            weights = weights * keep
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights


class ExpertGroup(nn.Module):
    """The experts of one modality (or the shared ones) and their router."""

    def __init__(self, dim_in: int, dim_out: int, num_experts: int, config: MoELoRAConfig):
        super().__init__()
        self.router = ExpertRouter(dim_in, num_experts, min(config.router_top_k, num_experts))
        self.experts = nn.ModuleList(
            ConvLoRAExpert(dim_in, dim_out, config.lora_rank, config.kernel_size_of_expert(i),
                           depthwise=config.expert_conv == "depthwise")
            for i in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.router(x)  # (B, E)
        out = weights[:, 0, None, None, None] * self.experts[0](x)
        for index in range(1, len(self.experts)):
            out = out + weights[:, index, None, None, None] * self.experts[index](x)
        return out  # (B, H, W, C_out)


class ModalityDispatcher(nn.Module):
    """MoE-LoRA update of one Hiera block's qkv.

    Routing "pair": the batch is (2B, H, W, C_in), the first half goes to the RGB experts,
    the second half to the depth experts; "rgb": the batch is B RGB samples, all to the RGB
    experts; "off": no update. Shared experts see every sample.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(2B | B, H, W, C_in) tokens on the full grid -> their update (same batch, C_out)."""
        if current_routing() == "rgb":
            update = self.rgb(x)
        else:
            if x.shape[0] % 2:  # a shape, not a value: static under tracing
                raise ValueError(f"MoE-LoRA pair routing needs B RGB + B depth samples, got a batch of {x.shape[0]}; "
                                 "encode one modality with M4SAM.encode_rgb or encode_sam2")
            half = x.shape[0] // 2
            update = torch.cat([self.rgb(x[:half]), self.depth(x[half:])], dim=0)  # (2B, H, W, C_out)
        if self.shared is not None:
            update = update + self.shared(x)
        return update * self.scale

    def on_qkv(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of ``attn.qkv``: add the update computed on the full token grid."""
        if current_routing() == "off":
            return output
        tokens = inputs[0]  # (B, H, W, C) or, in a windowed block, (B * windows, ws, ws, C)
        if self.window_size > 0:
            tokens = window_unpartition(tokens, self.window_size, self.padded, self.grid).contiguous()
            update, _ = window_partition(self(tokens), self.window_size)
        else:
            update = self(tokens)
        return output + update


class MoELoRA(Adapter):
    """One dispatcher per Hiera block and the gated multi-level fusion."""

    kind = MoELoRAConfig.kind
    config_type = MoELoRAConfig

    def __init__(self, config: MoELoRAConfig, geometry: TrunkGeometry):
        super().__init__(config)
        blocks = geometry.trunk.blocks
        self.moe_lora = nn.ModuleList(
            ModalityDispatcher(block.dim, 3 * block.dim_out, block.window_size, grid, config)
            for block, grid in zip(blocks, geometry.block_input_sizes()))
        self.fusion = GatedMultiLevelFusion(geometry.d_model, FPN_LEVELS, config.fusion_kernel_size,
                                            config.fusion_gate_init_bias, config.topdown_gate_init_bias)

    def attach(self, geometry: TrunkGeometry) -> None:
        for block, dispatcher in zip(geometry.trunk.blocks, self.moe_lora):
            block.attn.qkv.register_forward_hook(dispatcher.on_qkv)

    def fuse(self, rgb_levels: list[torch.Tensor], depth_levels: list[torch.Tensor],
             modality_present: torch.Tensor) -> list[torch.Tensor]:
        return self.fusion(rgb_levels, depth_levels, modality_present)

    def refine(self, rgb_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.fusion.refine(rgb_levels)
