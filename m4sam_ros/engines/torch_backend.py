"""PyTorch: the reference engines (CPU or CUDA; FP32, or FP16/BF16 through autocast).

They call the model's own methods, so they are what every other backend is compared
against. Reduced precision uses autocast, which keeps numerically touchy ops (LayerNorm,
softmax) in FP32; outputs are returned as FP32 like every engine's.
"""
from __future__ import annotations

import contextlib

import torch

from m4sam_ros.engines.base import (EncoderEngine, MemoryAttentionEngine, check_encoder_inputs, check_precision,
                                    check_rgb_input)
from m4sam_ros.devices import resolve_device
from m4sam_ros.model.m4sam import M4SAM, EncodedFrame
from m4sam_ros.model.memory import MemoryView

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _device_of(model: M4SAM, device: torch.device | str) -> torch.device:
    """The checked device, with the model moved there."""
    device = resolve_device(device)
    model.to(device)
    return device


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class TorchEncoder(EncoderEngine):
    """The model's encoders on ``device`` (the model is moved there)."""

    backend = "pytorch"

    def __init__(self, model: M4SAM, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.precision = check_precision(self.backend, precision, TORCH_PRECISIONS)
        self.model = model.eval()
        self.device = _device_of(model, device)
        self.image_size = model.config.image_size

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        check_encoder_inputs(rgb, depth, modality_present, self.image_size, batch=None)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode(rgb, depth, modality_present)
        return EncodedFrame(*(t.float() for t in frame))

    def encode_rgb(self, rgb: torch.Tensor) -> EncodedFrame:
        check_rgb_input(rgb, self.image_size, batch=None)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode_rgb(rgb)
        return EncodedFrame(*(t.float() for t in frame))

    def encode_sam2(self, rgb: torch.Tensor) -> EncodedFrame:
        check_rgb_input(rgb, self.image_size, batch=None)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode_sam2(rgb)
        return EncodedFrame(*(t.float() for t in frame))


class TorchMemoryAttention(MemoryAttentionEngine):
    """``model.condition_on_memory`` (SAM2's own memory attention) on ``device``."""

    backend = "pytorch"

    def __init__(self, model: M4SAM, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.precision = check_precision(self.backend, precision, TORCH_PRECISIONS)
        self.model = model.eval()
        self.device = _device_of(model, device)

    def __call__(self, frame: EncodedFrame, memory: MemoryView | None) -> torch.Tensor:
        with torch.inference_mode(), _autocast(self.device, self.precision):
            return self.model.condition_on_memory(frame, memory).float()
