"""Count the FLOPs of one frame, part by part, learned mode against SAM2's own (zero-shot).

Counted with PyTorch's ``torch.utils.flop_counter`` (matmuls, convolutions and attention;
element-wise work is not counted) on the graphs the engines run, so the figures are the
same whatever the backend. Attention runs on its math kernel while counting: the counter
does not see the fused CPU kernel. The weights do not change a count: a random init is enough.

    m4sam flops --preset hiera_t --image-size 512
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from m4sam_ros.engines.graphs import ENCODER, ENCODER_SAM2, MEMORY_ATTENTION, graph_spec
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.config import PRESETS
from m4sam_ros.model.m4sam import M4SAM

GIGA = 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="hiera_t", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--adapter-kind", default=None, help="adapter registry entry (default: the preset's own)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _count(function, *args) -> tuple[float, dict[str, float]]:
    """Total FLOPs of ``function(*args)`` and the FLOPs per module (dotted names from the root;
    a module's count includes everything called inside it, hooks too)."""
    counter = FlopCounterMode(display=False, depth=16)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        function(*args)
    parts = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return float(counter.get_total_flops()), parts


def _encoder_parts(parts: dict[str, float]) -> dict[str, float]:
    """An encoder's FLOPs by part: the frozen trunk's blocks (with any adapter hooks inside them),
    the adapter's experts among them, SAM2's neck and projections, each other adapter part."""
    wanted: dict[str, float] = defaultdict(float)
    for name, flops in parts.items():
        path = name.split(".")[2:]  # drop "<graph module>.model"
        if path[:3] == ["image_encoder", "trunk", "blocks"] and len(path) == 4 or path == [
                "image_encoder", "trunk", "patch_embed"]:
            wanted["trunk (frozen Hiera; hooks inside)"] += flops
        elif path[:2] == ["adapter", "moe_lora"] and len(path) == 3:
            wanted["of which adapter.moe_lora"] += flops
        elif path in (["image_encoder", "neck"], ["sam_mask_decoder", "conv_s0"], ["sam_mask_decoder", "conv_s1"]):
            wanted["SAM2 neck and projections"] += flops
        elif path[:1] == ["adapter"] and len(path) == 2 and path[1] != "moe_lora":
            wanted[".".join(path)] += flops
    return dict(wanted)


def frame_flops(model: M4SAM) -> dict:
    """GFLOPs of every per-frame part and of the two frames (learned, SAM2), with the ratio."""
    figures: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    for graph in (ENCODER_SAM2, ENCODER):
        spec = graph_spec(graph, model)
        total, parts = _count(spec.module, *spec.inputs.values())
        figures[graph] = total / GIGA
        breakdown[graph] = {k: v / GIGA for k, v in _encoder_parts(parts).items()}
    rgb = graph_spec(ENCODER, model).inputs["rgb"]
    figures["encoder_rgb"] = _count(model.encode_rgb, rgb)[0] / GIGA
    spec = graph_spec(MEMORY_ATTENTION, model)  # every slot: what the exported graph attends to
    figures[MEMORY_ATTENTION] = _count(spec.module, *spec.inputs.values())[0] / GIGA
    with torch.inference_mode():
        frame = model.encode_sam2(rgb)
        pix_feat = model.condition_on_memory(frame, None)
        decoded = model.decode(pix_feat, frame, is_init_frame=True)
    figures["decoder"] = _count(model.decode, pix_feat, frame, True)[0] / GIGA
    figures["memory_encoder"] = _count(model.encode_memory, frame, decoded, True)[0] / GIGA
    heads = figures[MEMORY_ATTENTION] + figures["decoder"] + figures["memory_encoder"]
    sam2_frame, learned_frame = figures[ENCODER_SAM2] + heads, figures[ENCODER] + heads
    return {"preset": model.config.name, "image_size": model.config.image_size, "adapter": model.config.adapter.kind,
            "gflops": figures, "encoder_breakdown": breakdown, "sam2_frame": sam2_frame,
            "learned_frame": learned_frame, "learned_over_sam2": learned_frame / sam2_frame}


def print_table(report: dict) -> None:
    print(f"### FLOPs per frame, {report['preset']} at {report['image_size']}² ({report['adapter']}), GFLOP\n")
    print("| part | GFLOP |\n|---|---|")
    names = {ENCODER_SAM2: "SAM2 image encoder (zero-shot)", ENCODER: "learned RGB-D encoder",
             "encoder_rgb": "learned encoder, frame without depth", MEMORY_ATTENTION: "memory attention, every slot",
             "decoder": "mask decoder", "memory_encoder": "memory encoder"}
    for key, label in names.items():
        print(f"| {label} | {report['gflops'][key]:.1f} |")
        if key == ENCODER:
            for part, value in report["encoder_breakdown"][ENCODER].items():
                print(f"| – {part} | {value:.1f} |")
    print(f"| **SAM2 frame** | {report['sam2_frame']:.1f} |")
    print(f"| **learned frame** | {report['learned_frame']:.1f} ({report['learned_over_sam2']:.2f}× SAM2) |")


def run(args: argparse.Namespace) -> int:
    model = load_m4sam(args.preset, args.image_size, adapter_kind=args.adapter_kind)
    report = frame_flops(model)
    print(json.dumps(report, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_table(report)
    return 0
