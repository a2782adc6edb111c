"""Export M4-SAM's graphs to ONNX and check ONNX Runtime parity: the RGB-D encoder (learned
mode) or SAM2's encoder (zero-shot), and the memory attention (slots for
--num-memory-frames).

Static shapes (batch 1, the chosen input size, fixed memory slots), named inputs and
outputs, opset 17 (native LayerNormalization, which TensorRT 8.6 and 10 parse; see
m4sam_ros/engines/export.py), simplified with onnxslim. --precision fp16 writes the graphs
strongly typed TensorRT builds take (engines/fp16.py; LayerNorm, softmax and the MoE routers
in fp32) and reports the fp32 model's residual-stream headroom under fp16's largest value;
int8 writes ONNX Runtime's dynamically quantised CPU graphs (engines/quantization.py). Each
file is checked with onnx.checker, then run in ONNX Runtime (CPU) against the fp32 PyTorch
model on random input and on synthetic RGB-D frames; the max absolute and relative errors
are printed, and the command fails when the relative error exceeds --tolerance (default per
precision: fp32 1e-4, fp16 1e-2, int8 1e-1).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from m4sam_ros.tools.model_args import add_memory_argument, add_model_arguments, default_graphs, model_from_args
from m4sam_ros.engines.export import OPSET, export_onnx
from m4sam_ros.engines.graphs import GRAPHS, MEMORY_ATTENTION, graph_spec
from m4sam_ros.engines.fp16 import residual_headroom
from m4sam_ros.engines.memory_attention import MemorySlots
from m4sam_ros.engines.quantization import quantize
from m4sam_ros.tools.parity import PARITY_CHECKS, ParityRow, worst

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}  # relative; reduced precision is checked against fp32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=Path("onnx"), help="where the .onnx files go")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=None,
                        help="graphs to export (default: what the node runs with these weights: with --adapter "
                             "the RGB-D encoder, without it SAM2's own (zero-shot); and the memory attention)")
    add_memory_argument(parser)
    parser.add_argument("--parity-frames", type=int, default=3,
                        help="synthetic RGB-D frames for the parity check (plus one random input)")
    parser.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime parity check")
    parser.add_argument("--precision", default="fp32", choices=tuple(TOLERANCES),
                        help="fp32; fp16 (for strongly typed TensorRT); int8 (ONNX Runtime on CPU)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest accepted relative error (max |ort - torch| / max |torch|; default per precision)")


def print_parity(rows: list[ParityRow]) -> None:
    width = max(len(r.inputs) for r in rows)
    print(f"{'graph':<17} {'inputs':<{width}} {'output':<12} {'max abs err':>12} {'rel err':>10}")
    for r in rows:
        print(f"{r.graph:<17} {r.inputs:<{width}} {r.output:<12} {r.error.max_abs:12.3e} {r.error.relative:10.3e}")


def run(args: argparse.Namespace) -> int:
    if args.parity_frames < 2:
        print("m4sam export: --parity-frames must be >= 2 (the memory check needs a bank before a frame)")
        return 2
    model = model_from_args(args)
    slots = MemorySlots.for_bank(model, args.num_memory_frames)
    failed = False
    tolerance = TOLERANCES[args.precision] if args.tolerance is None else args.tolerance
    for graph in args.graphs or default_graphs(model):
        spec = graph_spec(graph, model, slots=slots, precision="fp16" if args.precision == "fp16" else "fp32")
        name, size = model.config.name, model.config.image_size
        suffix = f"-{slots.recent_frames}frames" if graph == MEMORY_ATTENTION else ""
        suffix += "" if args.precision == "fp32" else f"-{args.precision}"
        path = args.output_dir / f"m4sam-{name}-{size}-{graph}{suffix}.onnx"
        export_onnx(spec, path, metadata={"preset": name, "image_size": str(size)})
        if args.precision == "int8":
            quantize(path, path)
        shapes = ", ".join(f"{name}{tuple(tensor.shape)}" for name, tensor in spec.inputs.items())
        print(f"wrote {path} ({args.precision}, opset {OPSET}; inputs {shapes})")
        if args.precision == "fp16":
            reference = graph_spec(graph, model, slots=slots)
            headroom = residual_headroom(reference.module, tuple(reference.inputs.values()))
            print(f"{graph}: fp16's largest value is {headroom:.0f}x the largest |LayerNorm input| of the fp32 model "
                  "(random input)")
        if args.no_parity:
            continue
        from m4sam_ros.engines.onnxruntime_backend import OrtGraph

        bank = {"num_memory_frames": slots.recent_frames} if graph == MEMORY_ATTENTION else {}
        rows = PARITY_CHECKS[graph](model, OrtGraph(path), frames=args.parity_frames, seed=args.seed, **bank)
        print_parity(rows)
        bad = worst(rows)
        verdict = "OK" if bad.relative <= tolerance else "FAILED"
        print(f"{graph}: ONNX Runtime ({args.precision}) vs PyTorch (fp32) max abs {bad.max_abs:.3e}, max relative "
              f"{bad.relative:.3e} (tolerance {tolerance:.0e}): {verdict}")
        failed |= verdict == "FAILED"
    return 1 if failed else 0
