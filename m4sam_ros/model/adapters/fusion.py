"""Gated multi-level fusion of RGB and depth FPN features.

Per level (stride 4, 8, 16) a cross-modal gate picks, per pixel and channel, how much of
each modality to keep: g = sigmoid(conv[F_rgb, F_d]); F = g * F_rgb + (1 - g) * F_d.
A sample whose depth (or RGB) is missing has the gate forced to the present modality, so
RGB-only and depth-only inference need no other code path. Then a top-down pass lets
coarse, semantic levels refine finer ones through a learned gate:
F_l <- F_l + G_l * up(F_{l+1}), G_l = sigmoid(conv[F_l, up(F_{l+1})]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gate_conv(channels: int, kernel_size: int, init_bias: float) -> nn.Conv2d:
    """[a, b] (2C channels) -> per-channel gate logits; starts constant at ``init_bias``."""
    conv = nn.Conv2d(2 * channels, channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.constant_(conv.bias, init_bias)
    return conv


class CrossModalGate(nn.Module):
    """g * F_rgb + (1 - g) * F_depth, with g collapsing to the present modality."""

    def __init__(self, channels: int, kernel_size: int, init_bias: float):
        super().__init__()
        self.conv = _gate_conv(channels, kernel_size, init_bias)

    def gate(self, f_rgb: torch.Tensor, f_depth: torch.Tensor, modality_present: torch.Tensor) -> torch.Tensor:
        """Effective RGB weight (B, C, H, W) in [0, 1]; modality_present (B, 2) = [rgb, depth] in {0, 1}."""
        g = torch.sigmoid(self.conv(torch.cat([f_rgb, f_depth], dim=1)))
        has_rgb = modality_present[:, 0, None, None, None]
        has_depth = modality_present[:, 1, None, None, None]
        # both present -> g; RGB only -> 1; depth only -> 0
        return g * has_rgb * has_depth + has_rgb * (1.0 - has_depth)

    def forward(self, f_rgb: torch.Tensor, f_depth: torch.Tensor, modality_present: torch.Tensor) -> torch.Tensor:
        g = self.gate(f_rgb, f_depth, modality_present)
        return g * f_rgb + (1.0 - g) * f_depth


class TopDownGate(nn.Module):
    """fine + G * up(coarse), G = sigmoid(conv[fine, up(coarse)])."""

    def __init__(self, channels: int, kernel_size: int, init_bias: float):
        super().__init__()
        self.conv = _gate_conv(channels, kernel_size, init_bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")  # SAM2's FPN upsamples the same way
        gate = torch.sigmoid(self.conv(torch.cat([fine, up], dim=1)))
        return fine + gate * up


class GatedMultiLevelFusion(nn.Module):
    """Fuses per-modality FPN levels (finest first, e.g. strides 4, 8, 16) into one pyramid."""

    def __init__(self, channels: int, num_levels: int, kernel_size: int, gate_init_bias: float,
                 topdown_init_bias: float):
        super().__init__()
        self.cross_modal = nn.ModuleList(CrossModalGate(channels, kernel_size, gate_init_bias)
                                         for _ in range(num_levels))
        self.top_down = nn.ModuleList(TopDownGate(channels, kernel_size, topdown_init_bias)
                                      for _ in range(num_levels - 1))

    def forward(self, rgb_levels: list[torch.Tensor], depth_levels: list[torch.Tensor],
                modality_present: torch.Tensor) -> list[torch.Tensor]:
        """rgb_levels / depth_levels: [(B, C, H_l, W_l)] finest first -> fused levels, finest first."""
        if len(rgb_levels) != len(self.cross_modal) or len(depth_levels) != len(self.cross_modal):
            raise ValueError(f"expected {len(self.cross_modal)} levels per modality, "
                             f"got {len(rgb_levels)} RGB and {len(depth_levels)} depth")
        fused = [gate(r, d, modality_present) for gate, r, d in zip(self.cross_modal, rgb_levels, depth_levels)]
        return self.refine(fused)

    def refine(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The top-down pass alone: what fusion amounts to for one modality, whose gate is exactly 1."""
        if len(levels) != len(self.cross_modal):
            raise ValueError(f"expected {len(self.cross_modal)} levels, got {len(levels)}")
        refined = list(levels)
        for level in range(len(refined) - 2, -1, -1):  # coarse to fine, so refinements cascade
            refined[level] = self.top_down[level](refined[level], refined[level + 1])
        return refined
