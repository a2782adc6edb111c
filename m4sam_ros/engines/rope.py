"""Rotary position encoding with real numbers only.

SAM2's ``apply_rotary_enc`` multiplies complex numbers (``view_as_complex``), which ONNX
cannot express. Rotating each channel pair (x0, x1) by angle a is the same thing in
real arithmetic: (x0 cos a - x1 sin a, x0 sin a + x1 cos a). The cos/sin tables come from
SAM2's own complex table (real and imaginary parts) so both sides use the same angles.
"""
from __future__ import annotations

import torch


def rope_tables(freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's complex table (N, D/2) -> (cos, sin), each (N, D/2) float32."""
    if not torch.is_complex(freqs_cis) or freqs_cis.dim() != 2:
        raise ValueError(f"expected SAM2's complex RoPE table of shape (N, D/2), got {freqs_cis.dtype} "
                         f"{tuple(freqs_cis.shape)}")
    return freqs_cis.real.float().contiguous(), freqs_cis.imag.float().contiguous()


def repeat_tables(cos: torch.Tensor, sin: torch.Tensor, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile the tables over ``repeats`` memory frames: (N, D/2) -> (repeats*N, D/2).

    Uses expand + reshape: ``repeat_interleave`` exports as a Tile pattern TensorRT rejects.
    """
    n, half = cos.shape
    return (cos.unsqueeze(0).expand(repeats, n, half).reshape(repeats * n, half),
            sin.unsqueeze(0).expand(repeats, n, half).reshape(repeats * n, half))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (..., N, D) by the angles of (N, D/2) tables; computed in float32
    like SAM2 (``xq.float()``), returned in x's dtype."""
    if x.shape[-2:] != (cos.shape[0], 2 * cos.shape[1]):
        raise ValueError(f"RoPE table ({cos.shape[0]}, {cos.shape[1]}) does not fit x of shape {tuple(x.shape)}; "
                         f"expected x (..., {cos.shape[0]}, {2 * cos.shape[1]})")
    pairs = x.float().reshape(*x.shape[:-1], cos.shape[1], 2)  # (..., N, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (..., N, D/2, 2)
    return rotated.flatten(-2).to(x.dtype)
