"""What an encoder hands the rest of the model: the features SAM2's decoder and memory read."""
from __future__ import annotations

from typing import NamedTuple

import torch


class EncodedFrame(NamedTuple):
    """Output of ``M4SAM.encode`` (B frames, image size S, C = d_model)."""

    image_embed: torch.Tensor  # (B, C, S/16, S/16) stride-16 features (memory attention, decoder)
    high_res_s4: torch.Tensor  # (B, C/8, S/4, S/4) as after SAM2's conv_s0
    high_res_s8: torch.Tensor  # (B, C/4, S/8, S/8) as after SAM2's conv_s1
    pos_enc: torch.Tensor  # (B, C, S/16, S/16) sine position encoding of image_embed

    @property
    def levels(self) -> list[torch.Tensor]:
        """The three feature levels, finest first: [s4, s8, s16]."""
        return [self.high_res_s4, self.high_res_s8, self.image_embed]

    def with_levels(self, levels: list[torch.Tensor]) -> "EncodedFrame":
        """The same frame with new [s4, s8, s16] levels (an adapter's fused ones)."""
        s4, s8, s16 = levels
        return EncodedFrame(s16, s4, s8, self.pos_enc)
