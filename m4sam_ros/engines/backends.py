"""The backend table: everything the package knows about a backend, in one row.

A row says which devices the backend runs on, why it cannot run here (from a
``Platform``), which precisions it runs on a device (best first: the first is what ``auto``
gets; ONNX Runtime runs int8 on CPU only, and its accuracy policy is ``int8_policy.py``'s), how
it compiles an exported graph (None: it runs the PyTorch model itself) and what a compiled
file depends on beyond the weights (part of its cache key: a TensorRT engine is only valid
for its TensorRT version and GPU). Selection, the factory, the ROS parameters and the
command-line verbs all derive their lists of choices from ``BACKENDS`` and ``AUTO_ORDER``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from m4sam_ros.engines.base import PRECISIONS
from m4sam_ros.engines.platform import Platform
from m4sam_ros.engines.tensorrt_backend import supported_precisions as tensorrt_precisions
from m4sam_ros.engines.torch_backend import TORCH_PRECISIONS

if TYPE_CHECKING:
    from m4sam_ros.engines.cache import ArtifactCache
    from m4sam_ros.engines.graph_engines import CompiledGraph
    from m4sam_ros.engines.factory import EngineSettings
    from m4sam_ros.engines.memory_attention import MemorySlots
    from m4sam_ros.engines.selection import Choice
    from m4sam_ros.model.m4sam import M4SAM

# model, graph name, cache, choice, settings, weights hash, memory slots -> a compiled graph
Compile = Callable[["M4SAM", str, "ArtifactCache", "Choice", "EngineSettings", str, "MemorySlots"], "CompiledGraph"]


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device types it can run on
    precisions: Callable[[Platform, str], tuple[str, ...]]  # (platform, device type) -> best first; () = none
    unavailable: Callable[[Platform, str], str | None]  # (platform, device type) -> why not, or None
    compile: Compile | None = None  # None: the PyTorch model runs as is
    target: Callable[[torch.device], tuple[tuple[str, str], ...]] = lambda device: ()  # cache-key fields
    all_precisions: tuple[str, ...] = ()  # what it runs on some platform (for the lists of choices)


def _no_cuda(platform: Platform, device_type: str) -> str | None:
    if device_type == "cuda" and not platform.cuda_available:
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def _ort_unavailable(platform: Platform, device_type: str) -> str | None:
    if reason := _no_cuda(platform, device_type):
        return reason
    if platform.ort_error:
        return platform.ort_error
    provider = "CUDAExecutionProvider" if device_type == "cuda" else "CPUExecutionProvider"
    if provider not in platform.ort_providers:
        return (f"onnxruntime has no {provider} (it has {', '.join(platform.ort_providers) or 'none'}); "
                f"{'pip install onnxruntime-gpu' if device_type == 'cuda' else 'reinstall onnxruntime'}")
    return None


def _tensorrt_unavailable(platform: Platform, device_type: str) -> str | None:
    if platform.tensorrt_version is None:  # the missing package first: it is the fix a user needs to read
        return platform.tensorrt_error or "TensorRT is not installed"
    if device_type != "cuda":
        return "TensorRT runs on CUDA GPUs only"
    return _no_cuda(platform, device_type)


def _ort_precisions(platform: Platform, device_type: str) -> tuple[str, ...]:
    """fp32; on CPU also int8 (dynamic quantisation: ONNX Runtime's integer kernels are CPU ones)."""
    return ("fp32", "int8") if device_type == "cpu" else ("fp32",)


def _ort_compile(model, graph, cache, choice, settings, weights, slots):
    from m4sam_ros.engines.export import cached_onnx
    from m4sam_ros.engines.quantization import cached_int8_onnx
    from m4sam_ros.engines.onnxruntime_backend import OrtGraph

    if choice.precision == "int8":
        path = cached_int8_onnx(model, graph, cache, weights, slots)
    else:
        path = cached_onnx(model, graph, cache, slots=slots, weights=weights)
    return OrtGraph(path, torch.device(choice.device), settings.threads)


def _tensorrt_compile(model, graph, cache, choice, settings, weights, slots):
    from m4sam_ros.engines.tensorrt_backend import tensorrt_graph

    return tensorrt_graph(model, graph, cache, choice.precision, torch.device(choice.device), weights,
                          settings.workspace_gib, slots)


def _tensorrt_target(device: torch.device) -> tuple[tuple[str, str], ...]:
    from m4sam_ros.engines.tensorrt_backend import engine_target

    return engine_target(device)


BACKENDS: dict[str, Backend] = {
    "pytorch": Backend("pytorch", ("cuda", "cpu"), lambda platform, device_type: TORCH_PRECISIONS, _no_cuda,
                       all_precisions=TORCH_PRECISIONS),
    "onnxruntime": Backend("onnxruntime", ("cuda", "cpu"), _ort_precisions, _ort_unavailable,
                           compile=_ort_compile, all_precisions=("fp32", "int8")),
    "tensorrt": Backend("tensorrt", ("cuda",),
                        lambda platform, device_type: tensorrt_precisions(platform.tensorrt_version)
                        if platform.tensorrt_version else (), _tensorrt_unavailable, compile=_tensorrt_compile,
                        target=_tensorrt_target, all_precisions=("fp16", "fp32")),
}
# (backend, device type) in the order ``auto`` tries them. On CPU PyTorch comes before ONNX
# Runtime because it is the reference and needs no export step; ONNX Runtime on CPU runs when asked for.
AUTO_ORDER: tuple[tuple[str, str], ...] = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("pytorch", "cuda"),
                                           ("pytorch", "cpu"))
BACKEND_NAMES = tuple(BACKENDS)
# what a user may ask for anywhere (parameters, flags): every precision some backend runs
RUNNABLE_PRECISIONS = tuple(p for p in PRECISIONS if any(p in b.all_precisions for b in BACKENDS.values()))


def explicit_order() -> tuple[tuple[str, str], ...]:
    """What an explicit backend may run on, best first: the auto order, then the rest of each row."""
    extra = tuple((b.name, d) for b in BACKENDS.values() for d in b.devices if (b.name, d) not in AUTO_ORDER)
    return AUTO_ORDER + extra
