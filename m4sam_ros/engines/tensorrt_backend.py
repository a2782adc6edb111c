"""TensorRT: build engines from the exported ONNX, run them on torch's CUDA stream.

Precision: FP16 by default (FP32 on request). How FP16 is built depends on the version:

- TensorRT >= 10: a strongly typed network from the FP16 ONNX (``fp16.py``: weights and
  activations fp16, LayerNorm, softmax and the MoE routers in fp32, decided at export and
  checked on a CPU against fp32). TensorRT 11 builds nothing else: it removed the FP16
  builder flag; weak typing is deprecated since 10.12.
- TensorRT 8.6 - 9.x: a weakly typed network from the FP32 ONNX with the FP16 builder flag,
  LayerNorm pinned to FP32 (its variance overflows FP16's 65504 on large activations; opset
  17's ``LayerNormalization`` becomes one normalisation layer whose precision can be
  constrained).
- Before 8.6: refused. TensorRT 8.5's ONNX parser has no LayerNormalization. That is the
  TensorRT of JetPack 5, so on a Jetson the minimum is JetPack 6 (TensorRT 10.3, Python 3.10).
  A graph 8.5 parses (LayerNorm decomposed) would not bring JetPack 5 back: its TensorRT
  bindings are for its Python 3.8, which cannot run this package (3.10+), and a decomposed
  LayerNorm's mean of squares is no longer one layer to keep in FP32. JetPack 6's bindings
  (python3-libnvinfer) are built for its system Python 3.10: a Jetson runs the node with that
  Python (ROS 2 Humble from apt), not from the repository's Python 3.11 venv.

INT8 needs a calibration set and is refused until one exists.

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


JETSON_RELEASE = Path("/etc/nv_tegra_release")  # present on every JetPack install
MINIMUM = (8, 6)


def missing_tensorrt_hint(jetson: bool, python: tuple[int, int]) -> str:
    """How to get TensorRT importable here (pure, testable off a Jetson)."""
    if not jetson:
        return ("TensorRT is not installed: pip install tensorrt (x86-64 with CUDA 12); or use "
                "engine.backend=onnxruntime or pytorch")
    return (f"TensorRT is not importable from this Python {python[0]}.{python[1]}: on a Jetson it comes with "
            "JetPack 6 (python3-libnvinfer, TensorRT 10.3), built for the system Python 3.10; run the node with "
            "that Python (ROS 2 Humble from apt), or from a venv made with `python3.10 -m venv "
            "--system-site-packages`, not from the repository's Python 3.11 .venv; or use engine.backend=pytorch")


def import_tensorrt():
    """The tensorrt module, or EngineUnavailable saying how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise EngineUnavailable(missing_tensorrt_hint(JETSON_RELEASE.exists(), sys.version_info[:2])) from error
    return tensorrt


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise EngineUnavailable("TensorRT needs a CUDA GPU and torch.cuda.is_available() is False here; "
                                "use engine.backend=onnxruntime or pytorch on CPU")


def tensorrt_version() -> str:
    return import_tensorrt().__version__


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = (int(part) for part in version.split(".")[:2])
    return major, minor


def supported_precisions(version: str) -> tuple[str, ...]:
    """What this package builds with TensorRT ``version`` (pure, testable without TensorRT):
    fp16 and fp32 from 8.6 on (strongly typed from 10), nothing before 8.6 (no LayerNormalization
    in its ONNX parser)."""
    return ("fp16", "fp32") if _major_minor(version) >= MINIMUM else ()


def strongly_typed(version: str) -> bool:
    """TensorRT >= 10 builds strongly typed networks (FP16 from the FP16 ONNX); 11 builds nothing else."""
    return _major_minor(version)[0] >= 10


def onnx_precision(version: str, precision: str) -> str:
    """The precision of the ONNX an engine of ``precision`` is built from with TensorRT ``version``."""
    return "fp16" if precision == "fp16" and strongly_typed(version) else "fp32"


def too_old(version: str) -> str:
    return (f"TensorRT {version} is too old: its ONNX parser lacks LayerNormalization (opset 17), which 8.6 and "
            "newer parse; on a Jetson that means JetPack 6 (TensorRT 10.3), not JetPack 5 (TensorRT 8.5)")


def check_tensorrt_precision(version: str, precision: str) -> str:
    supported = supported_precisions(version)
    if not supported:
        raise EngineUnavailable(too_old(version))
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


def _check_onnx_precision(onnx_path: Path, wanted: str, version: str) -> None:
    """A strongly typed build runs the types the ONNX has: refuse one of the wrong precision
    rather than build an engine whose name says fp16 and whose kernels are fp32."""
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    found = metadata.get("precision", "fp32")
    if found != wanted:
        raise EngineBuildError(f"{onnx_path.name} is a {found} graph; TensorRT {version} builds this engine from "
                               f"the {wanted} one (m4sam export --precision {wanted})")


def build_engine(onnx_path: Path | str, precision: str = "fp16", timing_cache: Path | None = None,
                 workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> bytes:
    """ONNX -> serialized TensorRT engine (static shapes, as exported). From TensorRT 10 on the
    network is strongly typed, so an fp16 engine needs the fp16 ONNX (``onnx_precision``)."""
    trt = import_tensorrt()
    require_cuda()
    precision = check_tensorrt_precision(trt.__version__, precision)
    onnx_path = Path(onnx_path)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    strong = strongly_typed(trt.__version__)
    _check_onnx_precision(onnx_path, onnx_precision(trt.__version__, precision), trt.__version__)
    flags = trt.NetworkDefinitionCreationFlag
    network = builder.create_network(1 << int(flags.STRONGLY_TYPED if strong else flags.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    with stage(f"TensorRT: parsing {onnx_path.name}"):
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and not strong:  # strongly typed: the types are the ONNX's
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
    source = onnx_precision(dict(target)["tensorrt_version"], precision)
    signature = onnx_key(model, graph_spec(graph, model, slots=slots, precision=source), weights).signature
    key = EngineKey(graph=graph, weights_sha256=weights, image_size=model.config.image_size, precision=precision,
                    target=target, signature=signature)
    path = None if rebuild else cache.lookup(key, ".engine")
    if path is not None:
        return path
    onnx_path = cached_onnx(model, graph, cache, slots=slots, weights=weights, precision=source)
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
