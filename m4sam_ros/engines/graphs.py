"""The exported graphs: their modules, tensor names and static shapes.

``encoder`` (RGB-D: ``M4SAM.encode``, learned mode), ``encoder_sam2`` (SAM2's own image
encoder: ``M4SAM.encode_sam2``, zero-shot mode) and ``memory_attention``. A node needs one
of the two encoders and, unless it keeps memory attention in PyTorch, the memory
attention (``graphs_for``).

Names are the contract between export, ONNX Runtime, TensorRT and the engines: change
them here only. Shapes are static (batch, image size and memory slots fixed at export),
which is what TensorRT optimises best and what keeps the ONNX free of shape arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from m4sam_ros.engines.memory_attention import MemorySlots, StaticMemoryAttention, memory_tokens
from m4sam_ros.model.m4sam import M4SAM, EncodedFrame

ENCODER = "encoder"
ENCODER_SAM2 = "encoder_sam2"
MEMORY_ATTENTION = "memory_attention"
GRAPHS = (ENCODER, ENCODER_SAM2, MEMORY_ATTENTION)

ENCODER_INPUTS = ("rgb", "depth", "modality_present")
ENCODER_SAM2_INPUTS = ("rgb",)
ENCODER_OUTPUTS = EncodedFrame._fields  # image_embed, high_res_s4, high_res_s8, pos_enc
MEMORY_INPUTS = ("image_embed", "pos_enc", "memory", "memory_pos", "memory_mask")
MEMORY_OUTPUTS = ("pix_feat",)


class _EncoderGraph(nn.Module):
    """``M4SAM.encode`` as a plain tuple-returning module (what the ONNX tracer wants)."""

    def __init__(self, model: M4SAM):
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> tuple:
        return tuple(self.model.encode(rgb, depth, modality_present))


class _EncoderSam2Graph(nn.Module):
    """``M4SAM.encode_sam2`` as a plain tuple-returning module."""

    def __init__(self, model: M4SAM):
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor) -> tuple:
        return tuple(self.model.encode_sam2(rgb))


@dataclass
class GraphSpec:
    """Everything export needs: module, example inputs (names in order) and output names."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    signature: dict = field(default_factory=dict)  # static-shape facts baked into the graph
    precision: str = "fp32"  # compute precision inside the graph (its I/O is float32 whatever it is)

    def run(self) -> dict[str, torch.Tensor]:
        """The PyTorch reference outputs on ``inputs``."""
        with torch.inference_mode():
            out = self.module(*self.inputs.values())
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.outputs, out, strict=True))


def feature_size(model: M4SAM) -> tuple[int, int]:
    """Stride-16 feature grid of the model's input size."""
    return model.config.image_size // 16, model.config.image_size // 16


def example_encoder_inputs(model: M4SAM, batch: int = 1, generator: torch.Generator | None = None,
                   modality_present: tuple[float, float] = (1.0, 1.0)) -> dict[str, torch.Tensor]:
    """Random ImageNet-normalised-like inputs of the encoder's static shape (seed 0 by default:
    exporting never touches the caller's global RNG)."""
    generator = generator or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    size = model.config.image_size
    shape = (batch, 3, size, size)
    return {"rgb": torch.randn(shape, generator=generator).to(device),
            "depth": torch.randn(shape, generator=generator).to(device),
            "modality_present": torch.tensor([modality_present] * batch, device=device)}


def encoder_spec(model: M4SAM, batch: int = 1, generator: torch.Generator | None = None) -> GraphSpec:
    return GraphSpec(name=ENCODER, module=_EncoderGraph(model).eval(),
                     inputs=example_encoder_inputs(model, batch, generator), outputs=ENCODER_OUTPUTS,
                     signature={"batch": batch})


def encoder_sam2_spec(model: M4SAM, batch: int = 1, generator: torch.Generator | None = None) -> GraphSpec:
    inputs = {"rgb": example_encoder_inputs(model, batch, generator)["rgb"]}
    return GraphSpec(name=ENCODER_SAM2, module=_EncoderSam2Graph(model).eval(), inputs=inputs,
                     outputs=ENCODER_OUTPUTS, signature={"batch": batch})


def graphs_for(model: M4SAM, zero_shot: bool, memory_attention: bool = True) -> tuple[str, ...]:
    """The graphs a tracker runs: SAM2's encoder in zero-shot mode, else the RGB-D one; plus
    the memory attention when the mode's temporal memory uses it and it does not stay in PyTorch."""
    attention = memory_attention and model.uses_memory_attention(zero_shot)
    return (ENCODER_SAM2 if zero_shot else ENCODER,) + ((MEMORY_ATTENTION,) if attention else ())


def example_memory_inputs(model: M4SAM, slots: MemorySlots, batch: int = 1, generator: torch.Generator | None = None,
                  filled_fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """Random inputs of the memory-attention graph's static shape, part of the slots empty."""
    generator = generator or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    h, w = feature_size(model)
    spatial, pointers = memory_tokens(model, slots, (h, w))
    n = spatial + pointers
    mask = torch.zeros(batch, n)
    mask[:, : max(h * w, int(spatial * filled_fraction))] = 1.0  # at least the conditioning frame
    mask[:, spatial: spatial + max(1, int(pointers * filled_fraction))] = 1.0
    channels = model.hidden_dim
    return {"image_embed": torch.randn(batch, channels, h, w, generator=generator).to(device),
            "pos_enc": torch.randn(batch, channels, h, w, generator=generator).to(device),
            "memory": torch.randn(batch, n, model.mem_dim, generator=generator).to(device),
            "memory_pos": torch.randn(batch, n, model.mem_dim, generator=generator).to(device),
            "memory_mask": mask.to(device)}


def memory_attention_spec(model: M4SAM, slots: MemorySlots | None = None, batch: int = 1,
                          generator: torch.Generator | None = None) -> GraphSpec:
    slots = slots or MemorySlots.for_bank(model)
    module = StaticMemoryAttention(model, slots, feature_size(model)).eval()
    return GraphSpec(name=MEMORY_ATTENTION, module=module, inputs=example_memory_inputs(model, slots, batch, generator),
                     outputs=MEMORY_OUTPUTS,
                     signature={"batch": batch, "conditioning_frames": slots.conditioning_frames,
                                "recent_frames": slots.recent_frames, "object_pointers": slots.object_pointers})


def graph_spec(name: str, model: M4SAM, batch: int = 1, slots: MemorySlots | None = None,
               generator: torch.Generator | None = None, precision: str = "fp32") -> GraphSpec:
    """The spec of graph ``name``; precision fp32 or fp16 (``fp16.py``: for strongly typed TensorRT)."""
    if name == ENCODER:
        spec = encoder_spec(model, batch, generator)
    elif name == ENCODER_SAM2:
        spec = encoder_sam2_spec(model, batch, generator)
    elif name == MEMORY_ATTENTION:
        spec = memory_attention_spec(model, slots, batch, generator)
    else:
        raise ValueError(f"unknown graph {name!r}; choose one of {GRAPHS}")
    if precision == "fp16":
        from m4sam_ros.engines.fp16 import fp16_spec

        return fp16_spec(spec)
    if precision != "fp32":
        raise ValueError(f"graphs are exported in fp32 or fp16, not {precision!r}")
    return spec
