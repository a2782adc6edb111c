"""PyTorch: the reference engines (CPU or CUDA; FP32, or FP16/BF16 through autocast).

They call the model's own methods, so they are what every other backend is compared
against. Reduced precision uses autocast, which keeps numerically touchy ops (LayerNorm,
softmax) in FP32; outputs are returned as FP32 like every engine's.

Two options for GPUs (``static_calls.py``), both off by default: ``cuda_graphs`` replays
the encoder and the memory attention as CUDA graphs (batch-1 launch overhead dominates on a
big GPU), ``compile`` runs them through ``torch.compile``. Either one runs the memory
attention on the bank packed into fixed slots (``StaticMemoryAttention``, the exported
graph's module: equal to SAM2's within float rounding, not to the bit); the conditioning
frame, which has no memory, keeps SAM2's own no-memory path.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from m4sam_ros.engines.base import (EncoderEngine, MemoryAttentionEngine, check_encoder_inputs, check_precision,
                                    check_rgb_input)
from m4sam_ros.engines.memory_attention import MemorySlots, StaticMemoryAttention, pack_memory
from m4sam_ros.engines.static_calls import StaticCalls, cuda_graphs_unavailable
from m4sam_ros.devices import resolve_device
from m4sam_ros.model.m4sam import M4SAM, EncodedFrame
from m4sam_ros.model.memory import MemoryView

log = logging.getLogger(__name__)

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


def _floats(frame: EncodedFrame) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() for t in frame)


def _static_calls(functions: dict, device: torch.device, precision: str, cuda_graphs: bool,
                  compile: bool) -> StaticCalls | None:
    """The engine's static calls, or None for plain eager calls (neither option on, or CUDA
    graphs asked for where they cannot run: then a warning says so and the engine runs eagerly)."""
    if cuda_graphs and (reason := cuda_graphs_unavailable(device)):
        log.warning("cuda_graphs: %s", reason)
        cuda_graphs = False
    if not (cuda_graphs or compile):
        return None
    return StaticCalls(functions, device, precision, cuda_graphs=cuda_graphs, compile=compile)


def _float32_bank(memory: MemoryView) -> MemoryView:
    """The bank with its bfloat16 storage promoted to float32, for fp16 autocast: there SAM2's
    ``torch.cat`` of bf16 memories and fp32 object pointers is refused (autocast promotes a mix
    of fp16 and fp32, not bf16 with fp16). fp32 and bf16 runs promote to float32 inside that
    ``cat`` anyway, so this is the same arithmetic."""
    def promote(value):
        if isinstance(value, torch.Tensor):
            return value.float()
        if isinstance(value, dict):
            return {k: promote(v) for k, v in value.items()}
        if isinstance(value, list):
            return [promote(v) for v in value]
        return value

    return MemoryView(memory.frame_index, promote(memory.output_dict), memory.num_frames)


class _TorchEngine:
    """What both PyTorch engines report about their options."""

    static: StaticCalls | None

    @property
    def cuda_graphs(self) -> bool:
        return self.static is not None and self.static.cuda_graphs

    @property
    def compiled(self) -> bool:
        return self.static is not None and self.static.compile

    @property
    def first_call_s(self) -> dict[str, float]:
        """Seconds each static call's first call took (warm-up, compile and capture included)."""
        return dict(self.static.first_call_s) if self.static is not None else {}

    def describe(self) -> str:
        options = (["CUDA graphs"] if self.cuda_graphs else []) + (["torch.compile"] if self.compiled else [])
        return f"{self.backend} on {self.device} ({', '.join([self.precision, *options])})"


class TorchEncoder(_TorchEngine, EncoderEngine):
    """The model's encoders on ``device`` (the model is moved there)."""

    backend = "pytorch"

    def __init__(self, model: M4SAM, device: torch.device | str = "cpu", precision: str = "fp32",
                 cuda_graphs: bool = False, compile: bool = False):
        self.precision = check_precision(self.backend, precision, TORCH_PRECISIONS)
        self.model = model.eval()
        self.device = _device_of(model, device)
        self.image_size = model.config.image_size
        self.static = _static_calls({"encode": lambda rgb, depth, present: _floats(model.encode(rgb, depth, present)),
                                     "encode_rgb": lambda rgb: _floats(model.encode_rgb(rgb)),
                                     "encode_sam2": lambda rgb: _floats(model.encode_sam2(rgb))},
                                    self.device, self.precision, cuda_graphs, compile)

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor, modality_present: torch.Tensor) -> EncodedFrame:
        check_encoder_inputs(rgb, depth, modality_present, self.image_size, batch=None)
        if self.static is not None:
            return EncodedFrame(*self.static("encode", rgb, depth, modality_present))
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode(rgb, depth, modality_present)
        return EncodedFrame(*_floats(frame))

    def encode_rgb(self, rgb: torch.Tensor) -> EncodedFrame:
        check_rgb_input(rgb, self.image_size, batch=None)
        if self.static is not None:
            return EncodedFrame(*self.static("encode_rgb", rgb))
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode_rgb(rgb)
        return EncodedFrame(*_floats(frame))

    def encode_sam2(self, rgb: torch.Tensor) -> EncodedFrame:
        check_rgb_input(rgb, self.image_size, batch=None)
        if self.static is not None:
            return EncodedFrame(*self.static("encode_sam2", rgb))
        with torch.inference_mode(), _autocast(self.device, self.precision):
            frame = self.model.encode_sam2(rgb)
        return EncodedFrame(*_floats(frame))


class TorchMemoryAttention(_TorchEngine, MemoryAttentionEngine):
    """``model.condition_on_memory`` (SAM2's own memory attention) on ``device``; with CUDA
    graphs or compile, SAM2's attention on the packed bank (see module docstring)."""

    backend = "pytorch"

    def __init__(self, model: M4SAM, device: torch.device | str = "cpu", precision: str = "fp32",
                 cuda_graphs: bool = False, compile: bool = False):
        self.precision = check_precision(self.backend, precision, TORCH_PRECISIONS)
        self.model = model.eval()
        self.device = _device_of(model, device)
        self.slots = MemorySlots.for_bank(model)
        self.feat_size = (model.config.image_size // 16, model.config.image_size // 16)
        attention = StaticMemoryAttention(model, self.slots, self.feat_size).eval() if cuda_graphs or compile else None
        self.static = _static_calls({"memory_attention": lambda *packed: (attention(*packed).float(),)},
                                    self.device, self.precision, cuda_graphs, compile)

    def __call__(self, frame: EncodedFrame, memory: MemoryView | None) -> torch.Tensor:
        if self.static is None or memory is None:
            if memory is not None and self.precision == "fp16":
                memory = _float32_bank(memory)
            with torch.inference_mode(), _autocast(self.device, self.precision):
                return self.model.condition_on_memory(frame, memory).float()
        with torch.inference_mode():
            packed = pack_memory(self.model, memory, self.slots, self.feat_size, frame.image_embed.shape[0])
        return self.static("memory_attention", frame.image_embed, frame.pos_enc, *packed)[0]
