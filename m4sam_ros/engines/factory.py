"""Build the engines a tracker runs with: backend selection, export and engine cache in one call.

    engines = create_engines(model, EngineSettings(backend="auto"))
    tracker = SaliencyTracker(model, config, device=engines.device,
                              encoder=engines.encoder, memory_attention=engines.memory_attention)

ONNX Runtime and TensorRT need the exported graphs; they are exported on first use into
the cache directory (keyed by weights hash, input size and static shapes) and TensorRT
engines are built from them once per (weights, size, precision, TensorRT, GPU). How each
backend compiles a graph is its row of the backend table (``backends.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from m4sam_ros.engines.backends import BACKENDS
from m4sam_ros.engines.base import EncoderEngine, EngineBuildError, EngineUnavailable, ExportError, MemoryAttentionEngine
from m4sam_ros.engines.cache import ArtifactCache, weights_hash
from m4sam_ros.engines.graph_engines import CompiledGraph, GraphEncoder, GraphMemoryAttention
from m4sam_ros.engines.graphs import MEMORY_ATTENTION, graphs_for
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.platform import Platform
from m4sam_ros.engines.selection import AUTO, Choice, select_backend
from m4sam_ros.engines.static_calls import cuda_graphs_unavailable
from m4sam_ros.engines.torch_backend import TorchEncoder, TorchMemoryAttention
from m4sam_ros.model.m4sam import M4SAM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """backend: auto | pytorch | onnxruntime | tensorrt; device: auto | cpu | cuda | cuda:N;
    precision: auto | fp32 | fp16 | bf16 | int8 (ONNX Runtime on CPU, when its accuracy policy allows);
    cache_dir: exported graphs and engines (None = $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros);
    memory_attention: also run memory attention on the chosen backend (False keeps it in PyTorch);
    num_memory_frames: the tracker's (``TrackerConfig.num_memory_frames``): the memory-attention
    graph has slots for that many recent frames and costs what they hold (None: SAM2's 6);
    zero_shot: export/build SAM2's own encoder (zero-shot mode: one pass, no adapters) instead
    of the RGB-D one (learned mode);
    workspace_gib: TensorRT builder workspace; threads: ONNX Runtime intra-op threads (0 = default);
    cuda_graphs: the PyTorch backend on CUDA replays the encoder and memory attention as CUDA
    graphs (elsewhere a warning, and eager calls); compile: the PyTorch backend runs them
    through torch.compile (the first frame pays the compile time);
    unvalidated_int8: run int8 even where its accuracy policy withholds it (for measuring that policy)."""

    backend: str = AUTO
    device: str = AUTO
    precision: str = AUTO
    cache_dir: str | None = None
    memory_attention: bool = True
    num_memory_frames: int | None = None
    zero_shot: bool = False
    workspace_gib: float = 4.0
    threads: int = 0
    cuda_graphs: bool = False
    compile: bool = False
    unvalidated_int8: bool = False

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


def _create(model: M4SAM, choice: Choice, settings: EngineSettings) -> Engines:
    backend = BACKENDS[choice.backend]
    if backend.compile is None:
        options = _torch_options(choice, settings)
        return Engines(TorchEncoder(model, choice.device, choice.precision, **options),
                       memory_attention_engine(model, choice, settings, torch_options=options), choice)
    if settings.cuda_graphs or settings.compile:
        log.info("cuda_graphs / compile are options of the PyTorch backend; %s compiles its own graphs",
                 choice.backend)
    model.to(torch.device(choice.device)).eval()  # the memory is packed, and the light stages run, next to the graphs
    weights = weights_hash(model)
    encoders = graphs_for(model, settings.zero_shot, memory_attention=False)
    encoder = GraphEncoder({g: _compile(model, g, choice, settings, weights) for g in encoders},
                           choice.backend, choice.precision)
    return Engines(encoder, memory_attention_engine(model, choice, settings, weights), choice)


def _compile(model: M4SAM, graph: str, choice: Choice, settings: EngineSettings, weights: str) -> CompiledGraph:
    slots = MemorySlots.for_bank(model, settings.num_memory_frames)
    return BACKENDS[choice.backend].compile(model, graph, ArtifactCache(settings.cache_dir), choice, settings,
                                            weights, slots)


def _torch_options(choice: Choice, settings: EngineSettings) -> dict:
    """The PyTorch engines' cuda_graphs / compile options, CUDA graphs refused (with a warning) off CUDA."""
    cuda_graphs = settings.cuda_graphs
    if cuda_graphs and (reason := cuda_graphs_unavailable(torch.device(choice.device))):
        log.warning("cuda_graphs: %s", reason)
        cuda_graphs = False
    return {"cuda_graphs": cuda_graphs, "compile": settings.compile}


def memory_attention_engine(model: M4SAM, choice: Choice, settings: EngineSettings, weights: str | None = None,
                            torch_options: dict | None = None) -> MemoryAttentionEngine:
    """The memory attention on ``choice`` for a bank of ``settings.num_memory_frames``: the exported
    graph where the backend compiles one and the mode uses it, else SAM2's own in PyTorch
    (``torch_options``: the PyTorch engines' options, if already resolved).
    The benchmark pairs one encoder with several of these to measure cost against bank size."""
    device = torch.device(choice.device)
    backend = BACKENDS[choice.backend]
    if backend.compile is None:
        options = torch_options if torch_options is not None else _torch_options(choice, settings)
        return TorchMemoryAttention(model, device, choice.precision, **options)
    if MEMORY_ATTENTION not in graphs_for(model, settings.zero_shot, settings.memory_attention):
        return TorchMemoryAttention(model, device, "fp32")
    graph = _compile(model, MEMORY_ATTENTION, choice, settings, weights or weights_hash(model))
    return GraphMemoryAttention(graph, model, MemorySlots.for_bank(model, settings.num_memory_frames),
                                choice.backend, choice.precision)


def create_engines(model: M4SAM, settings: EngineSettings = EngineSettings(),
                   platform: Platform | None = None) -> Engines:
    """Engines for ``model`` per ``settings``; logs what was picked and why.

    With backend ``auto`` a candidate that fails to start (e.g. ONNX Runtime lists CUDA but
    its libraries are missing, or its graph fails to export or build) is logged and the next
    one is tried; an explicit backend that cannot run raises the error with the reason.
    """
    selection = select_backend(settings.backend, settings.device, settings.precision, platform,
                               settings.unvalidated_int8)
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
