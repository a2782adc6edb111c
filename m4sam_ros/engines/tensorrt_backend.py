"""TensorRT: build engines from the exported ONNX, run them on torch's CUDA stream.

Precision: FP16 by default (FP32 on request). LayerNorm is pinned to FP32 inside FP16
engines: its variance (mean of squares) overflows FP16's 65504 on large activations and
TensorRT warns about exactly that; opset 17's ``LayerNormalization`` becomes one
normalisation layer whose precision can be constrained (TensorRT >= 8.6). TensorRT 8.6 to
10.x are supported; TensorRT 11 removed the FP16 builder flag (weak typing), so there it
builds FP32 only. INT8 needs a calibration set and is refused until one exists.

Builds report progress through TensorRT's ``IProgressMonitor`` (TensorRT >= 10) and fall
back to a spinner with elapsed time, and they reuse a timing cache, so a second build on
the same GPU takes a fraction of the first. Nothing here is imported unless TensorRT is
chosen; without TensorRT or a GPU the functions raise ``EngineUnavailable`` naming the fix.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from m4sam_ros.engines.base import EngineBuildError, EngineUnavailable, check_precision
from m4sam_ros.engines.cache import ArtifactCache, EngineKey, write_atomic
from m4sam_ros.engines.progress import stage

if TYPE_CHECKING:
    from m4sam_ros.engines.memory_attention import MemorySlots
    from m4sam_ros.model.m4sam import M4SAM

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_GIB = 4.0


def import_tensorrt():
    """The tensorrt module, or EngineUnavailable saying how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise EngineUnavailable("TensorRT is not installed: pip install tensorrt (x86-64 with CUDA 12), or on "
                                "Jetson use JetPack's python3-libnvinfer; or use engine.backend=onnxruntime "
                                "or pytorch") from error
    return tensorrt


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise EngineUnavailable("TensorRT needs a CUDA GPU and torch.cuda.is_available() is False here; "
                                "use engine.backend=onnxruntime or pytorch on CPU")


def tensorrt_version() -> str:
    return import_tensorrt().__version__


def supported_precisions(version: str) -> tuple[str, ...]:
    """What this package builds with TensorRT ``version`` (pure, testable without TensorRT).

    8.6 - 10.x: fp16 (builder flag, LayerNorm pinned to FP32) and fp32. 11+ removed weakly
    typed builds (BuilderFlag.FP16): fp32 only until an FP16 ONNX path exists. Before 8.6
    opset 17's LayerNormalization does not parse: nothing.
    """
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < (8, 6):
        return ()
    return ("fp16", "fp32") if major < 11 else ("fp32",)


def check_tensorrt_precision(version: str, precision: str) -> str:
    supported = supported_precisions(version)
    if not supported:
        raise EngineUnavailable(f"TensorRT {version} is too old: 8.6 or newer parses the exported opset-17 graphs")
    if precision == "fp16" and "fp16" not in supported:
        raise EngineUnavailable(f"TensorRT {version} removed weakly typed FP16 builds; use precision fp32 with it, "
                                "or TensorRT 10 (pip install 'tensorrt<11') for FP16")
    return check_precision("tensorrt", precision, supported)


def engine_target(device: torch.device | str = "cuda") -> tuple[tuple[str, str], ...]:
    """What an engine is tied to (its cache key's ``target``): the TensorRT version, and the GPU's
    name and compute capability "major.minor" of ``device``."""
    version = tensorrt_version()
    require_cuda()
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return (("tensorrt_version", version), ("gpu_name", torch.cuda.get_device_name(index)),
            ("compute_capability", f"{major}.{minor}"))


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _progress_monitor(trt, stream=sys.stderr):
    """A TensorRT IProgressMonitor printing nested build phases, or None before TensorRT 10."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class PhasePrinter(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._steps: dict[str, int] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._depth[phase_name] = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._steps[phase_name] = num_steps
            stream.write(f"{'  ' * self._depth[phase_name]}[TensorRT] {phase_name} (0/{num_steps})\n")
            stream.flush()

        def step_complete(self, phase_name: str, step: int) -> bool:
            if self._depth.get(phase_name, 0) == 0:  # top-level steps only, or the log floods
                stream.write(f"[TensorRT] {phase_name} ({step + 1}/{self._steps.get(phase_name, '?')})\n")
                stream.flush()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)
            self._depth.pop(phase_name, None)

    return PhasePrinter()


def _pin_normalization_fp32(trt, network) -> int:
    """Keep every normalisation (LayerNorm) layer in FP32; returns how many were pinned."""
    normalization = getattr(trt.LayerType, "NORMALIZATION", None)
    if normalization is None:
        log.warning("this TensorRT (%s) has no normalisation layer; LayerNorm runs in FP16 and may overflow",
                    trt.__version__)
        return 0
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == normalization:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: Path | str, precision: str = "fp16", timing_cache: Path | None = None,
                 workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> bytes:
    """ONNX -> serialized TensorRT engine (static shapes, as exported)."""
    trt = import_tensorrt()
    require_cuda()
    precision = check_tensorrt_precision(trt.__version__, precision)
    onnx_path = Path(onnx_path)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with stage(f"TensorRT: parsing {onnx_path.name}"):
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if _pin_normalization_fp32(trt, network):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    elif hasattr(trt.BuilderFlag, "TF32"):  # TF32 (10-bit mantissa) matmuls are on by default; fp32 means fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a mismatching cache is ignored, not fatal
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    with stage(f"TensorRT {trt.__version__}: building {precision} engine from {onnx_path.name} "
               "(minutes on a first build; cached afterwards)", spinner=monitor is None):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see its log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(serialized)


class TrtGraph:
    """A deserialized engine; ``run`` binds torch CUDA tensors and enqueues on torch's stream."""

    def __init__(self, engine_bytes: bytes, device: torch.device | str = "cuda"):
        trt = import_tensorrt()
        require_cuda()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT runs on cuda devices, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(_logger(trt))
            self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise EngineBuildError("TensorRT could not deserialize the engine (built by another TensorRT "
                                       "version or for another GPU?); rebuild it with `m4sam build-engine`")
            self.context = self.engine.create_execution_context()
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.engine.get_tensor_shape(name))
            if self.engine.get_tensor_dtype(name) != trt.float32 or any(d < 0 for d in shape):
                raise ValueError(f"engine tensor {name} is {self.engine.get_tensor_dtype(name)} {shape}; the engines "
                                 "need static float32 I/O (build from `m4sam export` ONNX)")
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_shapes if is_input else self.output_shapes)[name] = shape

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(feeds) != set(self.input_shapes):
            raise ValueError(f"engine takes inputs {sorted(self.input_shapes)}, got {sorted(feeds)}")
        inputs = {}
        for name, tensor in feeds.items():
            if tuple(tensor.shape) != self.input_shapes[name]:
                raise ValueError(f"engine input {name} must be {self.input_shapes[name]}, got {tuple(tensor.shape)}")
            inputs[name] = tensor.detach().to(self.device, torch.float32).contiguous()
        outputs = {n: torch.empty(s, dtype=torch.float32, device=self.device) for n, s in self.output_shapes.items()}
        for name, tensor in {**inputs, **outputs}.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        # enqueued on torch's stream: later torch ops are ordered after it, and the caching
        # allocator will not hand the input buffers to anyone before the engine is done with them;
        # TensorRT runs in the calling thread's current CUDA device, so make it the engine's (cuda:N)
        with torch.cuda.device(self.device):
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return outputs


def cached_engine(model: "M4SAM", graph: str, cache: ArtifactCache, precision: str, device: torch.device,
                  weights: str, workspace_gib: float = DEFAULT_WORKSPACE_GIB, slots: "MemorySlots | None" = None,
                  rebuild: bool = False) -> Path:
    """The engine file for ``graph`` (memory attention: with ``slots``, default the full bank)
    from the cache, or exported + built + cached on a miss (or when ``rebuild``)."""
    from m4sam_ros.engines.export import cached_onnx, onnx_key
    from m4sam_ros.engines.graphs import graph_spec

    target = engine_target(device)
    signature = onnx_key(model, graph_spec(graph, model, slots=slots), weights).signature
    key = EngineKey(graph=graph, weights_sha256=weights, image_size=model.config.image_size, precision=precision,
                    target=target, signature=signature)
    path = None if rebuild else cache.lookup(key, ".engine")
    if path is not None:
        return path
    onnx_path = cached_onnx(model, graph, cache, slots=slots, weights=weights)
    data = build_engine(onnx_path, precision, cache.timing_cache_path(target), workspace_gib)
    return cache.store(key, ".engine", data=data)


def tensorrt_graph(model: "M4SAM", graph: str, cache: ArtifactCache, precision: str, device: torch.device,
                   weights: str, workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                   slots: "MemorySlots | None" = None) -> "TrtGraph":
    """The cached (or built) engine of ``graph``, loaded; cached bytes TensorRT will not load are rebuilt once."""
    path = cached_engine(model, graph, cache, precision, device, weights, workspace_gib, slots)
    try:
        return TrtGraph(path.read_bytes(), device)
    except EngineBuildError as error:
        log.warning("%s; rebuilding %s", error, path)
        path = cached_engine(model, graph, cache, precision, device, weights, workspace_gib, slots, rebuild=True)
        return TrtGraph(path.read_bytes(), device)
