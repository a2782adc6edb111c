"""SAM-DAQ's adapter (Lin et al., "SAM-DAQ: Segment Anything Model with Depth-guided Adaptive
Queries for RGB-D Video Salient Object Detection", AAAI 2026), implemented from the paper's text.

PAMIE, the parallel-adapter multimodal image encoder: beside every Hiera block of the frozen
trunk sits a skip-connection adapter (down-projection, GELU, up-projection) whose output is
added to the block's output, bilinearly downsampled (DS) where the block pools:

    depth adapter:  F_D^i   = Hiera^i(F_D^{i-1})   + DS(Adapter(F_D^{i-1}))
    DPA (RGB):      F_RGB^i = Hiera^i(F_RGB^{i-1}) + DS(Adapter(Cat(F_RGB^{i-1}, F_D^{i-1})))

The trunk sees the usual batch of two (B RGB then B depth, ``adapters.base``); one pre-hook and
one hook per block read the block's input and add the update. Depth enters the RGB stream
through the DPA alone, so the fused levels are the RGB half's FPN levels (``fuse``). A sample
whose depth is absent (``M4SAM.encode`` zeroes an absent modality's input, which the trunk's
pre-hook detects) has its depth half replaced by zeros in the DPA input, exactly what the
one-modality pass (``encode_rgb``) feeds it: ``refine`` equals ``fuse`` with depth absent.

Gradients bypass the frozen trunk (the paper's point: 21 GB instead of 92 GB for serial
adapters at 1024 px): while a block has no trainable parameter its input is detached before
the block runs, so the block records no autograd graph and keeps no activations, and the
gradient reaches earlier adapters along the adapters' own path. A trunk that trains too
(``--train-all``) is back-propagated through as usual.

Self-inference: a light convolutional head on a fused level predicts the mask from it
(``intermediate_levels``; the paper supervises only the highest level, stride 16, and found
lower levels hurt), scored by the training loss's intermediate term. The temporal memory is
QTM (``model/query_memory.py``), which owns the queries; its parameters live here, so they
train and save with the adapter.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m4sam_ros.model.adapters.base import Adapter, AdapterConfig, TrunkGeometry, current_routing
from m4sam_ros.model.query_memory import QueryMemory, QueryTemporalMemory

FPN_LEVELS = 3  # strides 4, 8, 16 (SAM2's scalp=1 drops stride 32)

# Per call of the trunk: (B, 1, 1, 1) depth present, set by the trunk's pre-hook ("pair" routing);
# per block: the block's input, set by its pre-hook for its hook. Context variables, so two
# threads encoding at once never see each other's.
_DEPTH_PRESENT: contextvars.ContextVar[torch.Tensor] = contextvars.ContextVar("m4sam_daq_depth_present")
_BLOCK_INPUT: contextvars.ContextVar[torch.Tensor] = contextvars.ContextVar("m4sam_daq_block_input")


@dataclass(frozen=True)
class SAMDAQConfig(AdapterConfig):
    """SAM-DAQ: adapter_dim (bottleneck of every parallel adapter; the paper's best is 64),
    frame_queries / video_queries (N_f = 30, N_v = 8 in the paper), num_heads of the query
    attentions, ffn_ratio (QTM's FFN width / d_model), intermediate_levels (fused levels with a
    self-inference head, 0 = stride 4 .. 2 = stride 16; the paper supervises only 2)."""

    kind: ClassVar[str] = "sam_daq"

    adapter_dim: int = 64
    frame_queries: int = 30
    video_queries: int = 8
    num_heads: int = 8
    ffn_ratio: int = 4
    intermediate_levels: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        if min(self.adapter_dim, self.frame_queries, self.video_queries, self.num_heads, self.ffn_ratio) < 1:
            raise ValueError("adapter_dim, frame_queries, video_queries, num_heads and ffn_ratio must be >= 1, got "
                             f"{self.adapter_dim}, {self.frame_queries}, {self.video_queries}, {self.num_heads}, "
                             f"{self.ffn_ratio}")
        levels = self.intermediate_levels
        if len(set(levels)) != len(levels) or any(not 0 <= level < FPN_LEVELS for level in levels):
            raise ValueError(f"intermediate_levels must be distinct levels in [0, {FPN_LEVELS}), got {levels}")


class ParallelAdapter(nn.Module):
    """Adapter(x) = up(GELU(down(x))) on (B, H, W, C_in) tokens; ``up`` starts at zero, so a fresh
    adapter adds exactly nothing and the encoder starts as SAM2's."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim_in, hidden)
        self.up = nn.Linear(hidden, dim_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


def downsample(update: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """DS: bilinear resize of (B, H, W, C) tokens to the block's output grid (a no-op where the
    block keeps its resolution)."""
    if tuple(update.shape[1:3]) == tuple(size):
        return update
    resized = F.interpolate(update.permute(0, 3, 1, 2), size=tuple(size), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1)


class IntermediateHead(nn.Module):
    """Self-inference on one fused level: 3x3 conv -> GELU -> 1x1 conv to mask logits."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // 4)
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 1)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.conv(level)))  # (B, 1, H_l, W_l)


def _trains(block: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in block.parameters())


class SAMDAQ(Adapter):
    """PAMIE's adapters (a depth adapter and a DPA per Hiera block), the self-inference heads and
    QTM's parameters; learned mode streams with QTM (``memory = "queries"``)."""

    kind = SAMDAQConfig.kind
    method = "SAM-DAQ"
    config_type = SAMDAQConfig
    memory = "queries"

    def __init__(self, config: SAMDAQConfig, geometry: TrunkGeometry):
        super().__init__(config)
        if geometry.d_model % config.num_heads:
            raise ValueError(f"num_heads ({config.num_heads}) must divide d_model ({geometry.d_model})")
        blocks = geometry.trunk.blocks
        # the last block's depth output is read by no DPA (the fused levels are the RGB stream's): no adapter there
        self.depth_adapters = nn.ModuleList(ParallelAdapter(b.dim, b.dim_out, config.adapter_dim) for b in blocks[:-1])
        self.dpa = nn.ModuleList(ParallelAdapter(2 * b.dim, b.dim_out, config.adapter_dim) for b in blocks)
        # what the decoder reads per level: conv_s0 (C/8, stride 4), conv_s1 (C/4, stride 8), image_embed (C)
        widths = (geometry.d_model // 8, geometry.d_model // 4, geometry.d_model)
        self.intermediate = nn.ModuleDict({str(level): IntermediateHead(widths[level])
                                           for level in config.intermediate_levels})
        self.qtm = QueryTemporalMemory(geometry.d_model, geometry.mem_dim, config.frame_queries, config.video_queries,
                                       config.num_heads, config.ffn_ratio * geometry.d_model)
        # False: back-propagate through the frozen trunk as well (exact gradients, and the
        # activation memory the parallel design avoids); for measuring that cost
        self.bypass_trunk = True

    def attach(self, geometry: TrunkGeometry) -> None:
        geometry.trunk.register_forward_pre_hook(self._before_trunk)
        for index, block in enumerate(geometry.trunk.blocks):
            block.register_forward_pre_hook(self._before_block)
            block.register_forward_hook(partial(self._after_block, index))

    # ---- hooks -------------------------------------------------------------------------
    @staticmethod
    def _before_trunk(trunk: nn.Module, args: tuple) -> None:
        """Pair routing: which samples' depth half is present (not all zero)."""
        if current_routing() != "pair":
            return
        images = args[0]  # (2B, 3, S, S)
        if images.shape[0] % 2:  # a shape, not a value: static under tracing
            raise ValueError(f"SAM-DAQ pair routing needs B RGB + B depth samples, got a batch of {images.shape[0]}; "
                             "encode one modality with M4SAM.encode_rgb or encode_sam2")
        depth = images[images.shape[0] // 2:]
        present = (depth.flatten(1).abs().amax(dim=1) > 0).to(images.dtype)
        _DEPTH_PRESENT.set(present[:, None, None, None])

    def _before_block(self, block: nn.Module, args: tuple) -> tuple | None:
        """Remember the block's input for its adapters; hand the block a detached copy when
        gradients may bypass it (nothing in it trains)."""
        if current_routing() == "off":
            return None
        x = args[0]
        _BLOCK_INPUT.set(x)
        if self.bypass_trunk and x.requires_grad and torch.is_grad_enabled() and not _trains(block):
            return (x.detach(),)
        return None

    def _after_block(self, index: int, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Block output + DS(adapter update): the depth adapter on the depth half, the DPA on the
        RGB half (its input the RGB and the depth tokens side by side)."""
        routing = current_routing()
        if routing == "off":
            return output
        x = _BLOCK_INPUT.get()  # (2B | B, H, W, C_in)
        size = output.shape[1:3]
        if routing == "rgb":
            return output + downsample(self.dpa[index](torch.cat([x, torch.zeros_like(x)], dim=-1)), size)
        half = x.shape[0] // 2
        rgb, depth = x[:half], x[half:]
        guide = depth * _DEPTH_PRESENT.get()  # absent depth: zeros, as the one-modality pass feeds the DPA
        rgb_out = output[:half] + downsample(self.dpa[index](torch.cat([rgb, guide], dim=-1)), size)
        depth_out = output[half:]
        if index < len(self.depth_adapters):
            depth_out = depth_out + downsample(self.depth_adapters[index](depth), size)
        return torch.cat([rgb_out, depth_out])

    # ---- the seam ----------------------------------------------------------------------
    def fuse(self, rgb_levels: list[torch.Tensor], depth_levels: list[torch.Tensor],
             modality_present: torch.Tensor) -> list[torch.Tensor]:
        """The DPA fused depth into the RGB stream inside the trunk: the RGB half's levels."""
        return list(rgb_levels)

    def refine(self, rgb_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(rgb_levels)

    def intermediate_logits(self, levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Self-inference predictions of the decoder's inputs (high_res_s4, high_res_s8,
        image_embed): one (B, 1, H_l, W_l) logit map per head, finest level first."""
        return tuple(self.intermediate[str(level)](levels[level]) for level in sorted(self.config.intermediate_levels))

    def new_memory(self, num_memory_frames: int) -> QueryMemory:
        """QTM's stream state: the video-level queries (``num_memory_frames`` has no meaning here)."""
        return QueryMemory(self)
