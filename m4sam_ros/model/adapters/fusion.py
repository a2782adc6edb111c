"""Gated multi-level fusion of RGB and depth features, where SAM2's decoder reads them.

The levels are the decoder's inputs, finest first: stride 4 and 8 after SAM2's 32- and
64-channel projections (conv_s0 / conv_s1 at hiera_t), stride 16 at the full 256. Fusing
there, not on the 256-channel FPN levels, keeps M4-SAM's two gates and cuts their cost
from 99 GFLOP at hiera_t 512² (77 of them at stride 4) to 2.7 (`m4sam cost`).

Per level a cross-modal gate picks, per pixel and channel, how much of each modality to
keep: g = sigmoid(conv[F_rgb, F_d]); F = g * F_rgb + (1 - g) * F_d. A sample whose depth
(or RGB) is missing has the gate forced to the present modality, so RGB-only and
depth-only inference need no other code path. Then a top-down pass lets coarse, semantic
levels refine finer ones through a learned gate:
F_l <- F_l + G_l * up(P_l F_{l+1}), G_l = sigmoid(conv[F_l, up(P_l F_{l+1})]), where the
1x1 projection P_l brings the coarse level to the fine level's width.
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
    """fine + G * up(P coarse), G = sigmoid(conv[fine, up(P coarse)]); P: 1x1, coarse -> fine width."""

    def __init__(self, fine_channels: int, coarse_channels: int, kernel_size: int, init_bias: float):
        super().__init__()
        self.project = nn.Conv2d(coarse_channels, fine_channels, 1)
        self.conv = _gate_conv(fine_channels, kernel_size, init_bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        # projected before upsampling: the same result at a quarter of the cost
        up = F.interpolate(self.project(coarse), size=fine.shape[-2:], mode="nearest")  # as SAM2's FPN upsamples
        gate = torch.sigmoid(self.conv(torch.cat([fine, up], dim=1)))
        return fine + gate * up


class GatedMultiLevelFusion(nn.Module):
    """Fuses per-modality feature levels (finest first, ``widths`` channels) into one pyramid;
    ``kernel_sizes`` per level, for its cross-modal gate and the top-down gate into it."""

    def __init__(self, widths: tuple[int, ...], kernel_sizes: tuple[int, ...], gate_init_bias: float,
                 topdown_init_bias: float):
        super().__init__()
        if len(widths) != len(kernel_sizes):
            raise ValueError(f"one kernel size per level: {len(widths)} levels, got kernel sizes {kernel_sizes}")
        self.widths = tuple(widths)
        self.cross_modal = nn.ModuleList(CrossModalGate(w, k, gate_init_bias) for w, k in zip(widths, kernel_sizes))
        self.top_down = nn.ModuleList(TopDownGate(widths[i], widths[i + 1], kernel_sizes[i], topdown_init_bias)
                                      for i in range(len(widths) - 1))

    def forward(self, rgb_levels: list[torch.Tensor], depth_levels: list[torch.Tensor],
                modality_present: torch.Tensor) -> list[torch.Tensor]:
        """rgb_levels / depth_levels: [(B, C_l, H_l, W_l)] finest first -> fused levels, finest first."""
        self._check(rgb_levels, "RGB")
        self._check(depth_levels, "depth")
        fused = [gate(r, d, modality_present) for gate, r, d in zip(self.cross_modal, rgb_levels, depth_levels)]
        return self.refine(fused)

    def refine(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The top-down pass alone: what fusion amounts to for one modality, whose gate is exactly 1."""
        self._check(levels, "input")
        refined = list(levels)
        for level in range(len(refined) - 2, -1, -1):  # coarse to fine, so refinements cascade
            refined[level] = self.top_down[level](refined[level], refined[level + 1])
        return refined

    def _check(self, levels: list[torch.Tensor], what: str) -> None:
        widths = tuple(level.shape[1] for level in levels)
        if widths != self.widths:
            raise ValueError(f"expected {what} levels of widths {self.widths} (finest first), got {widths}")
