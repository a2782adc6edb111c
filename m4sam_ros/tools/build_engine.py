"""Build the TensorRT engines ahead of time, into the engine cache the node reads.

A first build takes minutes (up to ~10 on a Jetson); run this once after installing or
updating weights, TensorRT or the GPU, and the node starts from the cache. An engine
already cached for the same (weights, input size, precision, TensorRT version, GPU) is
reused; a stale or foreign one is rebuilt.
"""
from __future__ import annotations

import argparse

import torch

from m4sam_ros.engines.backends import BACKENDS
from m4sam_ros.engines.base import EngineUnavailable
from m4sam_ros.engines.cache import ArtifactCache, weights_hash
from m4sam_ros.engines.graphs import GRAPHS
from m4sam_ros.engines.tensorrt_backend import (DEFAULT_WORKSPACE_GIB, TrtGraph, cached_engine, import_tensorrt,
                                                require_cuda)
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.tools.model_args import add_memory_argument, add_model_arguments, default_graphs, model_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--precision", default="fp16", choices=(*BACKENDS["tensorrt"].all_precisions, "int8"),
                        help="engine precision (int8 needs calibration, not available yet)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (the GPU the engine is for)")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=None,
                        help="graphs to build (default: what the node runs with these weights: with --adapter "
                             "the RGB-D encoder, without it SAM2's own (zero-shot); and the memory attention)")
    parser.add_argument("--cache-dir", default=None,
                        help="engine cache (default $M4SAM_CACHE_DIR or ~/.cache/m4sam_ros)")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB, help="TensorRT builder workspace")
    parser.add_argument("--rebuild", action="store_true", help="build even when a valid cached engine exists")
    add_memory_argument(parser)


def run(args: argparse.Namespace) -> int:
    try:
        import_tensorrt()
        require_cuda()
        if args.precision == "int8":
            raise EngineUnavailable("INT8 needs a calibration data set, which this package does not provide yet; "
                                    "use --precision fp16")
    except EngineUnavailable as error:
        print(f"m4sam build-engine: {error}")
        return 2
    device = torch.device(args.device)
    model = model_from_args(args).to(device)
    cache = ArtifactCache(args.cache_dir)
    weights = weights_hash(model)
    for graph in args.graphs or default_graphs(model):
        path = cached_engine(model, graph, cache, args.precision, device, weights, args.workspace_gib,
                             MemorySlots.for_bank(model, args.num_memory_frames), rebuild=args.rebuild)
        TrtGraph(path.read_bytes(), device)  # proves it loads on this GPU
        print(f"{graph}: {path} ({path.stat().st_size / 1e6:.1f} MB, {args.precision})")
    return 0
