"""Command-line arguments the engine verbs share: which model, which engine."""
from __future__ import annotations

import argparse

from m4sam_ros.engines.backends import BACKEND_NAMES
from m4sam_ros.model.adapters import ADAPTERS
from m4sam_ros.engines.base import PRECISIONS
from m4sam_ros.engines.factory import EngineSettings
from m4sam_ros.engines.graphs import graphs_for
from m4sam_ros.engines.selection import AUTO
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.config import PRESETS
from m4sam_ros.model.m4sam import M4SAM
from m4sam_ros.tracker import TrackerConfig


def add_model_arguments(parser: argparse.ArgumentParser, default_size: int = 512) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="model preset (default: the adapter file's, else test: a tiny random model for checks)")
    group.add_argument("--image-size", type=int, default=None,
                       help=f"square model input size, a multiple of 32 (default: what the adapter was trained at, "
                            f"else {default_size})")
    parser.set_defaults(default_image_size=default_size)
    group.add_argument("--sam2-checkpoint", default=None, help="official SAM2/SAM2.1 checkpoint (.pt) for the preset")
    group.add_argument("--adapter", default=None, help="trained M4-SAM adapter file")
    group.add_argument("--adapter-kind", default=None, choices=sorted(ADAPTERS),
                       help="model variant to build without an adapter file (random adapter; a file says its own)")
    group.add_argument("--seed", type=int, default=0, help="seed of the random init (without checkpoints)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--backend", default=AUTO, choices=(AUTO, *BACKEND_NAMES))
    group.add_argument("--device", default=AUTO, help="auto, cpu, cuda or cuda:N")
    group.add_argument("--precision", default=AUTO, choices=(AUTO, *PRECISIONS))
    group.add_argument("--cache-dir", default=None,
                       help="exported graphs and TensorRT engines (default $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros)")
    group.add_argument("--no-memory-attention-engine", action="store_true",
                       help="keep memory attention in PyTorch whatever the backend")
    group.add_argument("--cuda-graphs", action="store_true",
                       help="PyTorch backend on CUDA: replay the encoder and memory attention as CUDA graphs")
    group.add_argument("--compile", action="store_true",
                       help="PyTorch backend: torch.compile the encoder and memory attention (compile time reported)")
    group.add_argument("--threads", type=int, default=0,
                       help="CPU threads of torch and ONNX Runtime (engine.num_threads; 0 = their defaults, one "
                            "per core); set it where other processes share the CPU")
    add_memory_argument(group)


def add_memory_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--num-memory-frames", type=int, default=TrackerConfig.num_memory_frames,
                        help="recent frames in the memory bank besides the conditioning frame "
                             "(tracker.num_memory_frames); the memory-attention graph has slots for that many")


def model_from_args(args: argparse.Namespace) -> M4SAM:
    """The model the arguments describe, weights loaded, in eval mode."""
    image_size = args.image_size or (None if args.adapter else args.default_image_size)
    return load_m4sam(args.preset, image_size, sam2_checkpoint=args.sam2_checkpoint, adapter=args.adapter,
                      adapter_kind=args.adapter_kind, seed=args.seed)


def engine_settings(args: argparse.Namespace, zero_shot: bool) -> EngineSettings:
    """``zero_shot``: the tracker runs in zero-shot mode (SAM2's own encoder)."""
    return EngineSettings(backend=args.backend, device=args.device, precision=args.precision,
                          cache_dir=args.cache_dir, memory_attention=not args.no_memory_attention_engine,
                          num_memory_frames=args.num_memory_frames, zero_shot=zero_shot, threads=args.threads,
                          cuda_graphs=args.cuda_graphs, compile=args.compile)


def default_graphs(model: M4SAM) -> list[str]:
    """What the node runs with these weights: with an adapter, learned mode (RGB-D encoder);
    without, zero-shot mode (SAM2's encoder); and the memory attention."""
    return list(graphs_for(model, zero_shot=not model.adapter_file))
