"""Build the engines a tracker runs with: backend selection, export and engine cache in one call.

    engines = create_engines(model, EngineSettings(backend="auto"))
    tracker = SaliencyTracker(model, config, device=str(engines.device),
                              encoder=engines.encoder, memory_attention=engines.memory_attention)

ONNX Runtime and TensorRT need the exported graphs; they are exported on first use into
the cache directory (keyed by weights hash, input size and static shapes) and TensorRT
engines are built from them once per (weights, size, precision, TensorRT, GPU).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from m4sam_ros.engines.base import EncoderEngine, EngineUnavailable, MemoryAttentionEngine
from m4sam_ros.engines.cache import ArtifactCache, EngineKey, weights_hash
from m4sam_ros.engines.export import ExportError, cached_onnx, onnx_key
from m4sam_ros.engines.graph_engines import GraphEncoder, GraphMemoryAttention
from m4sam_ros.engines.graphs import ENCODER, ENCODER_SAM2, MEMORY_ATTENTION, graph_spec, graphs_for
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.selection import AUTO, Choice, Platform, select_backend
from m4sam_ros.engines.tensorrt_backend import EngineBuildError
from m4sam_ros.engines.torch_backend import TorchEncoder, TorchMemoryAttention
from m4sam_ros.model.m4sam import M4SAM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """backend: auto | pytorch | onnxruntime | tensorrt; device: auto | cpu | cuda | cuda:N;
    precision: auto | fp32 | fp16 | bf16 (int8 refused until calibration exists);
    cache_dir: exported graphs and engines (None = $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros);
    memory_attention: also run memory attention on the chosen backend (False keeps it in PyTorch);
    zero_shot: export/build SAM2's own encoder (zero-shot mode: one pass, no adapters) instead
    of the RGB-D one (learned mode);
    workspace_gib: TensorRT builder workspace; threads: ONNX Runtime intra-op threads (0 = default)."""

    backend: str = AUTO
    device: str = AUTO
    precision: str = AUTO
    cache_dir: str | None = None
    memory_attention: bool = True
    zero_shot: bool = False
    workspace_gib: float = 4.0
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.workspace_gib > 0:
            raise ValueError(f"workspace_gib must be > 0, got {self.workspace_gib}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = ONNX Runtime's default), got {self.threads}")


@dataclass
class Engines:
    encoder: EncoderEngine
    memory_attention: MemoryAttentionEngine
    choice: Choice

    @property
    def device(self) -> torch.device:
        return self.encoder.device


def cached_tensorrt_engine(model: M4SAM, graph: str, cache: ArtifactCache, precision: str, device: torch.device,
                           weights: str, workspace_gib: float = 4.0, slots: MemorySlots | None = None,
                           rebuild: bool = False) -> Path:
    """The engine file for ``graph`` from the cache, or exported + built + cached on a miss
    (or when ``rebuild``)."""
    from m4sam_ros.engines.tensorrt_backend import build_engine, gpu_identity, tensorrt_version

    version = tensorrt_version()
    gpu, capability = gpu_identity(device)
    spec_key = onnx_key(model, graph_spec(graph, model, slots=slots), weights)
    key = EngineKey(graph=graph, weights_sha256=weights, image_size=model.config.image_size, precision=precision,
                    tensorrt_version=version, gpu_name=gpu, compute_capability=capability,
                    signature=spec_key.signature)
    path = None if rebuild else cache.lookup(key, ".engine")
    if path is not None:
        return path
    onnx_path = cached_onnx(model, graph, cache, slots=slots, weights=weights)
    data = build_engine(onnx_path, precision, cache.timing_cache_path(version, gpu, capability), workspace_gib)
    return cache.store(key, ".engine", data=data)


def _tensorrt_graph(model: M4SAM, graph: str, cache: ArtifactCache, choice: Choice, weights: str,
                    settings: EngineSettings):
    from m4sam_ros.engines.tensorrt_backend import EngineBuildError, TrtGraph

    device = torch.device(choice.device)
    path = cached_tensorrt_engine(model, graph, cache, choice.precision, device, weights, settings.workspace_gib)
    try:
        return TrtGraph(path.read_bytes(), device)
    except EngineBuildError as error:  # cached bytes TensorRT will not load: rebuild once
        log.warning("%s; rebuilding %s", error, path)
        path = cached_tensorrt_engine(model, graph, cache, choice.precision, device, weights,
                                      settings.workspace_gib, rebuild=True)
        return TrtGraph(path.read_bytes(), device)


def _create(model: M4SAM, choice: Choice, settings: EngineSettings) -> Engines:
    if choice.backend == "pytorch":
        return Engines(TorchEncoder(model, choice.device, choice.precision),
                       TorchMemoryAttention(model, choice.device, choice.precision), choice)
    device = torch.device(choice.device)
    model.to(device).eval()  # the bank is packed, and the light stages run, next to the graphs
    cache = ArtifactCache(settings.cache_dir)
    weights = weights_hash(model)
    graphs = graphs_for(settings.zero_shot, settings.memory_attention)
    if choice.backend == "onnxruntime":
        from m4sam_ros.engines.onnxruntime_backend import OrtGraph

        compiled = {g: OrtGraph(cached_onnx(model, g, cache, weights=weights), device, settings.threads)
                    for g in graphs}
    elif choice.backend == "tensorrt":
        compiled = {g: _tensorrt_graph(model, g, cache, choice, weights, settings) for g in graphs}
    else:
        raise ValueError(f"unknown backend {choice.backend!r}")
    encoder = GraphEncoder({g: compiled[g] for g in (ENCODER, ENCODER_SAM2) if g in compiled},
                           choice.backend, choice.precision)
    if settings.memory_attention:
        memory = GraphMemoryAttention(compiled[MEMORY_ATTENTION], model, MemorySlots.for_model(model),
                                      choice.backend, choice.precision)
    else:
        memory = TorchMemoryAttention(model, device, "fp32")
    return Engines(encoder, memory, choice)


def create_engines(model: M4SAM, settings: EngineSettings = EngineSettings(),
                   platform: Platform | None = None) -> Engines:
    """Engines for ``model`` per ``settings``; logs what was picked and why.

    With backend ``auto`` a candidate that fails to start (e.g. ONNX Runtime lists CUDA but
    its libraries are missing, or its graph fails to export or build) is logged and the next
    one is tried; an explicit backend that cannot run raises the error with the reason.
    """
    selection = select_backend(settings.backend, settings.device, settings.precision, platform)
    for choice in selection.candidates:
        try:
            engines = _create(model, choice, settings)
        except (EngineUnavailable, ExportError, EngineBuildError) as error:
            if settings.backend != AUTO:
                raise
            selection.skipped.append(f"{choice.backend} on {choice.device}: {error}")
            log.warning("engine %s on %s could not start: %s", choice.backend, choice.device, error)
            continue
        log.info("engine: %s", selection.explain(choice))
        return engines
    raise EngineUnavailable("no engine could start: " + "; ".join(selection.skipped))
