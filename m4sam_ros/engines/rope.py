"""Rotary position encoding with real numbers only.

SAM2's ``apply_rotary_enc`` multiplies complex numbers (``view_as_complex``), which ONNX
cannot express. Rotating each channel pair (x0, x1) by angle a is the same thing in
real arithmetic: (x0 cos a - x1 sin a, x0 sin a + x1 cos a). The cos/sin tables come from
SAM2's own complex table (real and imaginary parts) so both sides use the same angles.

Keys of M memory frames repeat one frame's angles (SAM2's ``repeat_freqs_k``); ``rotate``
broadcasts the one-frame table over the frames instead of tiling it, so an exported graph
holds each table once (one frame's worth), whatever the number of memory slots.
"""
from __future__ import annotations

import torch


def rope_tables(freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's complex table (N, D/2) -> (cos, sin), each (N, D/2) float32."""
    if not torch.is_complex(freqs_cis) or freqs_cis.dim() != 2:
        raise ValueError(f"expected SAM2's complex RoPE table of shape (N, D/2), got {freqs_cis.dtype} "
                         f"{tuple(freqs_cis.shape)}")
    return freqs_cis.real.float().contiguous(), freqs_cis.imag.float().contiguous()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (..., R*N, D) by the angles of (N, D/2) tables, the same
    angles for each of the R consecutive groups of N tokens (R memory frames; R = 1 for
    queries). Computed in float32 like SAM2 (``xq.float()``), returned in x's dtype."""
    n, half = cos.shape
    tokens = x.shape[-2]
    if x.shape[-1] != 2 * half or tokens % n:
        raise ValueError(f"RoPE table ({n}, {half}) does not fit x of shape {tuple(x.shape)}; expected x "
                         f"(..., R*{n}, {2 * half})")
    pairs = x.float().reshape(*x.shape[:-2], tokens // n, n, half, 2)  # (..., R, N, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (..., R, N, D/2, 2)
    return rotated.reshape(x.shape).to(x.dtype)
