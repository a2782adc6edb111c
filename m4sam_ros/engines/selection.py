"""Which backend runs: ``auto`` takes the fastest one this machine can run, and says why.

Order for ``auto``: TensorRT (CUDA), ONNX Runtime (CUDA), PyTorch (CUDA), PyTorch (CPU).
On CPU PyTorch comes before ONNX Runtime because it is the reference and needs no export
step; ONNX Runtime on CPU is there when asked for. The decision is pure Python over a
``Platform`` description, so it is tested without a GPU; ``Platform.probe()`` fills it
from the real machine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from m4sam_ros.engines.base import BACKENDS, PRECISIONS, EngineUnavailable
from m4sam_ros.engines.tensorrt_backend import supported_precisions as tensorrt_precisions
from m4sam_ros.engines.torch_backend import TORCH_PRECISIONS

AUTO = "auto"
# (backend, device type) in the order ``auto`` tries them
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("pytorch", "cuda"), ("pytorch", "cpu"))
# what an explicit backend may run on, best first (ONNX Runtime on CPU only when asked for)
EXPLICIT_ORDER = AUTO_ORDER + (("onnxruntime", "cpu"),)
def supported_precisions(backend: str, platform: "Platform") -> tuple[str, ...]:
    """Best first: the first one is what ``auto`` precision gets."""
    if backend == "tensorrt":
        return tensorrt_precisions(platform.tensorrt_version) if platform.tensorrt_version else ()
    return ("fp32",) if backend == "onnxruntime" else TORCH_PRECISIONS


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

        cuda = torch.cuda.is_available()
        gpu = torch.cuda.get_device_name() if cuda else None
        from m4sam_ros.engines.onnxruntime_backend import available_providers
        from m4sam_ros.engines.tensorrt_backend import tensorrt_version

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


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str  # "cpu", "cuda" or "cuda:N"
    precision: str


@dataclass
class Selection:
    """The candidates to try, best first, and a line per candidate passed over."""

    candidates: list[Choice]
    skipped: list[str] = field(default_factory=list)

    @property
    def choice(self) -> Choice:
        return self.candidates[0]

    def explain(self, picked: Choice | None = None) -> str:
        """One log line: what was picked and why the better candidates were passed over."""
        picked = picked or self.choice
        why = "; ".join(self.skipped) if self.skipped else "first choice available"
        return f"picked {picked.backend} on {picked.device} ({picked.precision}); passed over: {why}"


def _unavailable(backend: str, device_type: str, platform: Platform) -> str | None:
    """Why (backend, device) cannot run here, or None when it can."""
    if backend == "tensorrt":  # the missing package first: it is the fix a user needs to read
        if platform.tensorrt_version is None:
            return platform.tensorrt_error or "TensorRT is not installed"
        if device_type != "cuda":
            return "TensorRT runs on CUDA GPUs only"
    if device_type == "cuda" and not platform.cuda_available:
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    if backend == "onnxruntime":
        if platform.ort_error:
            return platform.ort_error
        provider = "CUDAExecutionProvider" if device_type == "cuda" else "CPUExecutionProvider"
        if provider not in platform.ort_providers:
            return f"onnxruntime has no {provider} (it has {', '.join(platform.ort_providers) or 'none'}); " \
                   f"{'pip install onnxruntime-gpu' if device_type == 'cuda' else 'reinstall onnxruntime'}"
    return None


def _check_request(backend: str, device: str, precision: str) -> None:
    if backend != AUTO and backend not in BACKENDS:
        raise ValueError(f"engine backend must be {AUTO!r} or one of {BACKENDS}, got {backend!r}")
    if device != AUTO and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"engine device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if precision != AUTO and precision not in PRECISIONS:
        raise ValueError(f"engine precision must be {AUTO!r} or one of {PRECISIONS}, got {precision!r}")


def select_backend(backend: str = AUTO, device: str = AUTO, precision: str = AUTO,
                   platform: Platform | None = None) -> Selection:
    """Candidates for (backend, device, precision), each possibly ``auto``.

    An explicit backend that cannot run here raises ``EngineUnavailable`` with the reason
    (a user who asked for TensorRT must not silently get something else); ``auto`` skips
    what cannot run and records why (``Selection.explain``; the factory logs it).
    """
    _check_request(backend, device, precision)
    platform = platform or Platform.probe()
    if precision == "int8":
        raise EngineUnavailable("INT8 needs a calibration data set, which this package does not provide yet; "
                                "use precision fp16 (TensorRT) or fp32")
    order = [(b, d) for b, d in (AUTO_ORDER if backend == AUTO else EXPLICIT_ORDER)
             if (backend == AUTO or b == backend) and (device == AUTO or d == device.split(":")[0])]
    if not order:  # tensorrt on cpu: let _unavailable say why
        order = [(backend, device.split(":")[0])]
    selection = Selection(candidates=[])
    for b, d in order:
        reason = _unavailable(b, d, platform)
        supported = supported_precisions(b, platform)
        if reason is None and not supported:
            reason = f"TensorRT {platform.tensorrt_version} is too old (8.6 or newer parses the opset-17 graphs)"
        elif reason is None and precision != AUTO and precision not in supported:
            reason = f"{b}{' ' + platform.tensorrt_version if b == 'tensorrt' else ''} runs " \
                     f"{'/'.join(supported)}, not {precision}"
        name = f"{b} on {d}"
        if reason is not None:
            selection.skipped.append(f"{name}: {reason}")
            continue
        resolved_device = device if device.startswith("cuda:") else d
        resolved_precision = supported[0] if precision == AUTO else precision
        selection.candidates.append(Choice(b, resolved_device, resolved_precision))
    if not selection.candidates:
        raise EngineUnavailable(f"no engine can run backend={backend} device={device} precision={precision} here: "
                                + "; ".join(selection.skipped))
    return selection
