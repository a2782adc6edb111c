"""Running SAM2's Hiera trunk stage by stage, so a branch can stop early.

``Hiera.forward`` runs every block; M4-SAM's depth branch runs only the early stages (the
frozen blocks with its own experts) and the RGB branch continues from there. These two
functions are that forward, cut at stage boundaries: run over all stages they return what
``Hiera.forward`` returns, operation for operation.
"""
from __future__ import annotations

import torch
from sam2.modeling.backbones.hieradet import Hiera


def embed(trunk: Hiera, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding plus position embedding: (B, 3, S, S) -> tokens (B, S/4, S/4, C)."""
    tokens = trunk.patch_embed(images)
    return tokens + trunk._get_pos_embed(tokens.shape[1:3])


def run_stages(trunk: Hiera, tokens: torch.Tensor, stages: range) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the blocks of ``stages`` (e.g. ``range(0, 2)``: the first two) on ``tokens`` entering
    the first of them -> (tokens leaving the last, each stage's output (B, C_s, H_s, W_s))."""
    ends = trunk.stage_ends
    if not 0 <= stages.start < stages.stop <= len(ends) or stages.step != 1:
        raise ValueError(f"stages must be a contiguous range within the trunk's {len(ends)}, got {stages}")
    first = 0 if stages.start == 0 else ends[stages.start - 1] + 1
    outputs = []
    for index in range(first, ends[stages.stop - 1] + 1):
        tokens = trunk.blocks[index](tokens)
        if index in ends:
            outputs.append(tokens.permute(0, 3, 1, 2))
    return tokens, outputs


def stage_widths(trunk: Hiera) -> list[int]:
    """Channels of each stage's output, first stage first."""
    return list(reversed(trunk.channel_list))
