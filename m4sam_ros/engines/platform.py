"""What this machine offers the engines: CUDA, TensorRT, ONNX Runtime's providers.

A plain description (``Platform``), so backend selection is decided and tested without a
GPU; ``Platform.probe()`` fills it from the real machine.
"""
from __future__ import annotations

from dataclasses import dataclass

from m4sam_ros.engines.base import EngineUnavailable


@dataclass(frozen=True)
class Platform:
    """What this machine offers. ``*_error`` says why a piece is missing (None = present)."""

    cuda_available: bool
    gpu_name: str | None = None
    tensorrt_version: str | None = None
    tensorrt_error: str | None = None
    ort_providers: tuple[str, ...] = ()
    ort_error: str | None = None

    @classmethod
    def probe(cls) -> "Platform":
        import torch

        from m4sam_ros.engines.onnxruntime_backend import available_providers
        from m4sam_ros.engines.tensorrt_backend import tensorrt_version

        cuda = torch.cuda.is_available()
        gpu = torch.cuda.get_device_name() if cuda else None
        try:
            trt_version, trt_error = tensorrt_version(), None
        except EngineUnavailable as error:
            trt_version, trt_error = None, str(error)
        try:
            providers, ort_error = available_providers(), None
        except EngineUnavailable as error:
            providers, ort_error = (), str(error)
        return cls(cuda_available=cuda, gpu_name=gpu, tensorrt_version=trt_version, tensorrt_error=trt_error,
                   ort_providers=providers, ort_error=ort_error)
