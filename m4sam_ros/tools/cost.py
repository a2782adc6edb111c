"""What a model variant costs: trainable parameters, per-frame compute and training memory.

* Per-frame GFLOP by stage in learned mode, once the stream is in its steady state (M4-SAM:
  the memory bank full, 1 conditioning + N recent frames and their object pointers; SAM-DAQ:
  its query state): one RGB-D frame encoded and stepped through ``model.new_memory(...).step``,
  the tracker's own step; the same for SAM2's own frame (zero-shot mode: SAM2's encoder and
  memory), and the ratio; the learned encoder by part (frozen trunk with the adapter's hooks
  inside, the experts among them, SAM2's neck and projections, each other adapter part).
  Counted by ``torch.utils.flop_counter`` (matrix products, convolutions, attention;
  element-wise operations are not counted), so they depend on the architecture and input
  size only, never on the weights: a preset without its checkpoint gives its true figures.
* Training memory of one clip (batch 1, ``--clip-length`` frames, streamed as ``m4sam train``
  does with ``run_clip``, SAM2 frozen): the bytes autograd keeps for the backward pass
  (parameters excluded), the part of training memory that grows with trunk and image size;
  on CUDA also the peak allocated over forward and backward.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from m4sam_ros.devices import resolve_device
from m4sam_ros.engines.graphs import ENCODER, graph_spec
from m4sam_ros.learn.batching import ClipBatch
from m4sam_ros.learn.losses import LossWeights, frame_losses
from m4sam_ros.learn.train import run_clip
from m4sam_ros.model.m4sam import M4SAM, parameter_counts
from m4sam_ros.tools.model_args import add_model_arguments, model_from_args

_MIB = float(1 << 20)


def _cpu_attention_flops(query: tuple, key: tuple, value: tuple, *args, **kwargs) -> int:
    """The CPU kernel of ``scaled_dot_product_attention`` (Hiera's, SAM2's and the queries'
    attention), which the counter has no formula for: the same count as its CUDA kernels."""
    return sdpa_flop_count(query, key, value)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


class FlopWatch:
    """``with watch("encoder"): ...`` adds the block's FLOPs to ``flops["encoder"]`` (a stopwatch
    of compute: the memory step times its stages with the same calls)."""

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            yield
        self.flops[stage] = self.flops.get(stage, 0) + counter.get_total_flops()


def _example_frame(model: M4SAM, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    shape = (1, 3, model.config.image_size, model.config.image_size)
    return (torch.randn(shape, generator=generator).to(device), torch.randn(shape, generator=generator).to(device),
            torch.ones(1, 2, device=device))


def frame_flops(model: M4SAM, zero_shot: bool = False) -> dict[str, int]:
    """FLOPs per stage ("encoder", "memory_attention", "decoder", "memory_encoder") of one frame in
    the steady state: learned mode (an RGB-D frame), or with ``zero_shot`` SAM2's own frame."""
    model.eval()
    inputs = _example_frame(model, seed=0)
    encode = (lambda: model.encode_sam2(inputs[0])) if zero_shot else (lambda: model.encode(*inputs))
    memory = model.new_memory(zero_shot=zero_shot, num_memory_frames=model.num_maskmem - 1)
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)  # the counter's module tracker hooks the gradients of inputs that want them
    try:
        with torch.inference_mode():
            filler = encode()
            for t in range(model.max_obj_ptrs_in_encoder):  # the bank's every slot, pointers included
                memory.step(model, filler, conditioning=t == 0)
            watch = FlopWatch()
            with watch("encoder"):
                frame = encode()
            memory.step(model, frame, conditioning=False, watch=watch)
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trains[name])
    return watch.flops


def encoder_parts(model: M4SAM) -> dict[str, float]:
    """The learned RGB-D encoder's FLOPs by part: the frozen trunk's blocks (with the adapter's
    hooks inside them), of which the experts (``adapter.moe_lora``), SAM2's neck and projections,
    and each other adapter part. A module's count includes everything called inside it."""
    spec = graph_spec(ENCODER, model)  # called as a module, so the counter names submodules by path
    counter = FlopCounterMode(display=False, depth=16, custom_mapping=_EXTRA_FORMULAS)
    with torch.inference_mode(), counter:
        spec.module(*spec.inputs.values())
    parts: dict[str, float] = defaultdict(float)
    for name, ops in counter.get_flop_counts().items():
        path, flops = name.split(".")[2:], float(sum(ops.values()))  # drop "<graph module>.model"
        if path[:3] == ["image_encoder", "trunk", "blocks"] and len(path) == 4 or path == [
                "image_encoder", "trunk", "patch_embed"]:
            parts["trunk (frozen Hiera; hooks inside)"] += flops
        elif path[:2] == ["adapter", "moe_lora"] and len(path) == 3:
            parts["of which adapter.moe_lora"] += flops
        elif path in (["image_encoder", "neck"], ["sam_mask_decoder", "conv_s0"], ["sam_mask_decoder", "conv_s1"]):
            parts["SAM2 neck and projections"] += flops
        elif path[:1] == ["adapter"] and len(path) == 2 and path[1] != "moe_lora":
            parts[".".join(path)] += flops
    return dict(parts)


def training_memory(model: M4SAM, clip_length: int) -> dict[str, float | None]:
    """Memory of one training clip with random frames: {"saved_for_backward_mib", "cuda_peak_mib"}."""
    device = next(model.parameters()).device
    size = model.config.image_size
    generator = torch.Generator().manual_seed(1)

    def frames(channels: int) -> torch.Tensor:
        return torch.randn(1, clip_length, channels, size, size, generator=generator)

    gt = (frames(1) > 0).float()
    batch = ClipBatch(frames(3), frames(3), torch.ones(1, clip_length, 2), gt,
                      torch.ones(1, clip_length, dtype=torch.bool)).to(device)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:  # a view of a weight costs nothing extra
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = torch.zeros((), device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        for t, decoded in run_clip(model, batch, num_memory_frames=model.num_maskmem - 1):
            losses = frame_losses(decoded.high_res_logits, decoded.object_score_logits, batch.gt[:, t], LossWeights(),
                                  decoded.aux_logits)
            total = total + losses["total"].sum()
    total.backward()
    peak = torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"saved_for_backward_mib": sum(saved.values()) / _MIB, "cuda_peak_mib": peak}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default_size=512)
    group = parser.add_argument_group("cost")
    group.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--clip-length", type=int, default=4,
                       help="frames of the training clip (0: skip training memory)")
    group.add_argument("--through-frozen-trunk", action="store_true",
                       help="SAM-DAQ: back-propagate through the frozen trunk too (the cost its parallel adapters "
                            "avoid)")
    group.add_argument("--json", type=Path, default=None, help="also write the report here")


def print_table(report: dict) -> None:
    """GFLOP per frame, learned mode beside SAM2's own frame, the encoder by part below it."""
    learned, sam2 = report["gflop_per_frame"], report["sam2_gflop_per_frame"]
    print(f"### {report['preset']} at {report['image_size']}², adapter {report['adapter']}: "
          f"{report['parameters']['trainable']:,} trainable parameters\n")
    print("| GFLOP per frame | learned | SAM2 (zero-shot) |\n|---|---|---|")
    for stage in ("encoder", "memory_attention", "decoder", "memory_encoder"):
        print(f"| {stage} | {learned[stage]:.2f} | {sam2[stage]:.2f} |")
        if stage == "encoder":
            for part, value in report["encoder_parts_gflop"].items():
                print(f"| – {part} | {value:.2f} | |")
    print(f"| **frame** | **{learned['total']:.2f}** ({report['learned_over_sam2']:.2f}× SAM2) | "
          f"**{sam2['total']:.2f}** |")


def run(args: argparse.Namespace) -> int:
    if args.clip_length < 0:
        raise ValueError(f"--clip-length must be >= 0, got {args.clip_length}")
    model = model_from_args(args).to(resolve_device(args.device))
    if args.through_frozen_trunk:
        if not hasattr(model.adapter, "bypass_trunk"):
            raise ValueError(f"--through-frozen-trunk: adapter {model.config.adapter.kind!r} has no trunk bypass")
        model.adapter.bypass_trunk = False
    flops, sam2 = frame_flops(model), frame_flops(model, zero_shot=True)
    report = {"preset": model.config.name, "image_size": model.config.image_size,
              "adapter": model.config.adapter.kind, "parameters": parameter_counts(model),
              "gflop_per_frame": {stage: value / 1e9 for stage, value in flops.items()},
              "sam2_gflop_per_frame": {stage: value / 1e9 for stage, value in sam2.items()},
              "encoder_parts_gflop": {part: value / 1e9 for part, value in encoder_parts(model).items()},
              "training": training_memory(model, args.clip_length) if args.clip_length else None}
    report["gflop_per_frame"]["total"] = sum(flops.values()) / 1e9
    report["sam2_gflop_per_frame"]["total"] = sum(sam2.values()) / 1e9
    report["learned_over_sam2"] = report["gflop_per_frame"]["total"] / report["sam2_gflop_per_frame"]["total"]
    print_table(report)
    if report["training"]:
        training = report["training"]
        cuda = f", CUDA peak {training['cuda_peak_mib']:.0f} MiB" if training["cuda_peak_mib"] is not None else ""
        print(f"\ntraining clip of {args.clip_length} frames: {training['saved_for_backward_mib']:.1f} MiB "
              f"saved for backward{cuda}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0
