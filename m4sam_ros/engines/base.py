"""The engine interface: one callable per exported stage, whatever runs it.

The tracker swaps the model's encoders (``encode``, ``encode_rgb``, ``encode_sam2``) for an
``EncoderEngine`` and ``model.condition_on_memory`` for a ``MemoryAttentionEngine``; both
take and return the same types as those model methods (torch tensors, float32, on
``engine.device``), so the rest of the tracker never knows which backend ran.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from m4sam_ros.model.m4sam import EncodedFrame
from m4sam_ros.model.memory import MemoryView

# every precision the package names; each backend runs the subset its row in backends.py lists
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INT8_WHERE = ("int8 runs on ONNX Runtime on CPU (dynamic quantisation); TensorRT INT8 needs a calibration data set, "
              "which this package does not provide")


class EngineUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and what to use instead."""


class ExportError(RuntimeError):
    """The exported graph is invalid or contains something the engines cannot run."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build an engine from it."""


def check_precision(backend: str, precision: str, supported: tuple[str, ...]) -> str:
    """Refuse a precision the backend cannot run, naming the ones it can."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and "int8" not in supported:
        raise EngineUnavailable(f"{backend} has no int8: {INT8_WHERE}")
    if precision not in supported:
        raise EngineUnavailable(f"{backend} runs precision {', '.join(supported)}, not {precision}")
    return precision


def check_encoder_inputs(rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor,
                         image_size: int, batch: int | None) -> None:
    """Shapes an encoder engine accepts; ``batch`` None = any (PyTorch), else the exported one."""
    expected_batch = rgb.shape[0] if batch is None else batch
    want = (expected_batch, 3, image_size, image_size)
    if tuple(rgb.shape) != want or tuple(depth.shape) != want:
        raise ValueError(f"encoder engine expects rgb and depth of shape {want}, "
                         f"got {tuple(rgb.shape)} and {tuple(depth.shape)}")
    if tuple(modality_present.shape) != (expected_batch, 2):
        raise ValueError(f"modality_present must be ({expected_batch}, 2) = [rgb, depth] per frame, "
                         f"got {tuple(modality_present.shape)}")


def check_rgb_input(rgb: torch.Tensor, image_size: int, batch: int | None) -> None:
    """Shape an RGB-only encoder path accepts; ``batch`` None = any, else the exported one."""
    want = (rgb.shape[0] if batch is None else batch, 3, image_size, image_size)
    if tuple(rgb.shape) != want:
        raise ValueError(f"the RGB-only encoder expects rgb of shape {want}, got {tuple(rgb.shape)}")


class Engine(ABC):
    """What every engine tells about itself (for logs, diagnostics and the benchmark)."""

    backend: str  # a name of backends.BACKENDS
    device: torch.device  # where inputs are expected and outputs are returned
    precision: str  # one of PRECISIONS (the compute precision; I/O is always float32)

    def describe(self) -> str:
        return f"{self.backend} on {self.device} ({self.precision})"


class EncoderEngine(Engine):
    """The heavy stateless part: Hiera + MoE-LoRA + FPN + gated fusion (``M4SAM.encode``)."""

    image_size: int

    @abstractmethod
    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        """rgb, depth (B, 3, S, S) ImageNet-normalised; modality_present (B, 2) -> EncodedFrame."""

    def encode_rgb(self, rgb: torch.Tensor) -> EncodedFrame:
        """Learned mode, frames without depth (``M4SAM.encode_rgb``). This fallback feeds the RGB-D
        path zeros and marks depth absent: the same result, at the cost of the depth pass that
        the PyTorch engine skips (dropouts are rare; a graph for them would double the builds)."""
        absent = torch.tensor([[1.0, 0.0]], device=rgb.device).expand(rgb.shape[0], 2)
        return self(rgb, torch.zeros_like(rgb), absent)

    @abstractmethod
    def encode_sam2(self, rgb: torch.Tensor) -> EncodedFrame:
        """Zero-shot mode: SAM2's own image encoder (``M4SAM.encode_sam2``); rgb (B, 3, S, S)."""


class MemoryAttentionEngine(Engine):
    """Current frame's features attend to the memory bank (``M4SAM.condition_on_memory``)."""

    @abstractmethod
    def __call__(self, frame: EncodedFrame, memory: MemoryView | None) -> torch.Tensor:
        """frame + bank (None = conditioning frame, no memory) -> (B, C, S/16, S/16) features."""
