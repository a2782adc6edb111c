"""Train a model variant's adapter (``--adapter-kind``: M4-SAM's MoE-LoRA + fusion, SAM-DAQ's) on
RGB-D video clips, SAM2 frozen.

Each clip runs the way the tracker runs a stream, through the same per-frame step
(``model.new_memory(...).step``): frame 0 is the prompt-free initialisation (no memory; its
coarse mask is encoded as the conditioning frame), later frames attend to the memory and
feed it. Losses
(BCE + soft IoU on the mask logits, BCE on the object score, and the BCE of intermediate
predictions for an adapter that makes them: SAM-DAQ) are summed over the frames
that have ground truth, and gradients flow back through the memory.

Settings: dataclass defaults < ``--config file.yaml`` < explicit flags (see ``--help``).
Outputs in ``out_dir``: ``checkpoint.pt`` (exact resume: trainable tensors, optimiser,
scheduler, grad scaler, RNG states, step), ``train_log.csv``, ``loss_curve.png``, the
adapter file (model.checkpoint format) and, with ``--train-all``, the trained SAM2 part
as an official-format checkpoint (``{"model": state_dict}``) that ``--sam2-checkpoint``
loads. Clips are a pure function of (seed, draw index), and the torch RNG (memory-attention
dropout, modality dropout) is re-seeded from (seed, micro-batch index) before every
micro-batch, so resuming needs no data state and it does not matter which process runs a
micro-batch.

Across GPUs and machines (``torchrun``, see ``distributed.py``): with world size W, rank r
runs micro-batches (step * accumulate + m) * W + r for m < accumulate, each of
``batch_size`` clips, so one step's global batch is batch_size * accumulate * W clips, the
same clips and dropout draws as one process with accumulate * W; the gradients are
averaged over ranks before the optimizer step. Weights stay identical on every rank; only
rank 0 writes checkpoints, logs, the adapter and runs the held-out evaluation. With
accumulate 1 and a power-of-two W the result equals that one-process run to the bit (the
per-rank mean of g/W is the one-process sum of g/W); otherwise up to the order of float sums.
A resume may change W when accumulate * W (the global batch) stays.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from m4sam_ros.learn.batching import ClipBatch, collate_clips
from m4sam_ros.learn.clips import ClipSampler
from m4sam_ros.learn.datasets import LAYOUTS, DatasetError, VideoRecord, open_dataset
from m4sam_ros.learn.distributed import World, join, leave, world_from_environment
from m4sam_ros.learn.losses import LossWeights, frame_losses
from m4sam_ros.learn.options import add_dataclass_arguments, config_from_args
from m4sam_ros.learn.synthetic import SyntheticConfig, write_dataset
from m4sam_ros.depth import SCALES as DEPTH_SCALES, DepthConfig
from m4sam_ros.devices import resolve_device
from m4sam_ros.model.adapters import ADAPTERS
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.checkpoint import CheckpointError, save_adapter
from m4sam_ros.model.config import PRESETS
from m4sam_ros.model.m4sam import M4SAM, DecoderOutput

LOG = logging.getLogger("m4sam.train")
CHECKPOINT_FORMAT = "m4sam-train-checkpoint"
CHECKPOINT_VERSION = 1
MAX_NONFINITE_STEPS = 10  # skipped updates in a row before training stops as diverged
LOG_COLUMNS = ("step", "lr", "loss", "bce", "iou", "object", "inter", "grad_norm", "clips_per_s", "elapsed_s")
# Settings a resume may change. All but `steps` keep the run bit-exact; a new `steps` is
# allowed (to train longer) but reshapes the cosine schedule from the resume point on.
# `accumulate` may change with the world size as long as accumulate x world size (the
# micro-batches of one step) stays, which load_checkpoint checks.
_RESUMABLE_CHANGES = {"resume", "checkpoint_every", "progress", "threads", "out_dir", "adapter_out", "sam2_weights_out",
                      "val_data", "val_layout", "val_split", "val_videos", "val_rendered_videos", "steps", "accumulate"}


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Everything one training run depends on (see each field's help)."""

    # model
    preset: str = field(default="test", metadata=_help("model preset", choices=sorted(PRESETS)))
    adapter_kind: str = field(default="moe_lora", metadata=_help(
        "which adapter to train (model.adapters registry); --init-adapter's file decides when given",
        choices=sorted(ADAPTERS)))
    image_size: int = field(default=512, metadata=_help("model input size (multiple of 32)"))
    sam2_checkpoint: str | None = field(default=None, metadata=_help(
        "official SAM2/SAM2.1 checkpoint for the frozen part (required unless preset 'test' or --train-all)"))
    init_adapter: str | None = field(default=None, metadata=_help("adapter file to start from (fine-tuning)"))
    train_all: bool = field(default=False, metadata=_help(
        "DEMO ONLY: train ALL parameters (SAM2 too), for a small preset without a SAM2 checkpoint"))
    seed: int = field(default=0, metadata=_help("seed of model init, clip draws, dropout"))
    data_seed: int | None = field(default=None, metadata=_help(
        "seed of the generated videos, training and held-out (default: --seed); keep it and change "
        "--seed to measure training's spread on the same data and held-out sets"))
    # data
    data: str | None = field(default=None, metadata=_help("dataset root (added to the generated videos below)"))
    layout: str = field(default="auto", metadata=_help("dataset layout", choices=list(LAYOUTS)))
    split: str = field(default="train", metadata=_help("dataset split (train/test; DViSal: split-list name)"))
    depth_folder: str | None = field(default=None, metadata=_help("depth sub-folder override (RDVS: SyntheticDepth)"))
    rendered_videos: int = field(default=0, metadata=_help(
        "rendered robot-scene videos (m4sam scenes, train split) generated into out_dir/rendered/train"))
    rendered_frames: int = field(default=24, metadata=_help("frames per rendered video"))
    rendered_height: int = field(default=120, metadata=_help("rendered frame height"))
    rendered_width: int = field(default=160, metadata=_help("rendered frame width"))
    synthetic_videos: int | None = field(default=None, metadata=_help(
        "generated 2-D videos (learn/synthetic); default 8 when neither --data nor --rendered-videos is given, else 0"))
    synthetic_frames: int = field(default=24, metadata=_help("frames per synthetic video"))
    synthetic_height: int = field(default=96, metadata=_help("synthetic frame height"))
    synthetic_width: int = field(default=128, metadata=_help("synthetic frame width"))
    synthetic_missing_depth_prob: float = field(default=0.05, metadata=_help("synthetic frames with dropped depth"))
    depth_scale: str = field(default="log", metadata=_help(
        "how metric depth maps to the model's [0, 1] input between --depth-min-m and --depth-max-m; "
        "recorded in the adapter file (8-bit benchmark depth is used as it is)", choices=list(DEPTH_SCALES)))
    depth_min_m: float = field(default=0.1, metadata=_help("nearest valid metric depth (m)"))
    depth_max_m: float = field(default=10.0, metadata=_help("farthest valid metric depth (m)"))
    clip_length: int = field(default=4, metadata=_help("frames per clip (frame 0 = conditioning frame)"))
    clip_stride: int = field(default=1, metadata=_help("frame step inside a clip"))
    flip_prob: float = field(default=0.5, metadata=_help("probability of mirroring a clip"))
    num_memory_frames: int = field(default=6, metadata=_help("recent frames in the memory bank (as the tracker)"))
    # optimisation
    steps: int = field(default=1000, metadata=_help("optimizer steps"))
    batch_size: int = field(default=1, metadata=_help("clips per micro-batch"))
    accumulate: int = field(default=1, metadata=_help("micro-batches per optimizer step (gradient accumulation)"))
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (not on biases and norms)"))
    warmup_steps: int = field(default=50, metadata=_help("linear warm-up steps, then cosine decay"))
    min_lr_ratio: float = field(default=0.05, metadata=_help("final learning rate / peak"))
    grad_clip: float = field(default=1.0, metadata=_help("max gradient norm (0 = off)"))
    bce_weight: float = field(default=1.0, metadata=_help("weight of the pixel BCE loss"))
    iou_weight: float = field(default=1.0, metadata=_help("weight of the soft IoU loss"))
    object_weight: float = field(default=0.1, metadata=_help("weight of the object-score BCE loss"))
    intermediate_weight: float = field(default=0.5, metadata=_help(
        "weight of the intermediate predictions' BCE (adapters that make them: sam_daq)"))
    amp: str = field(default="auto", metadata=_help(
        "mixed precision: auto = fp16 + GradScaler on CUDA, off on CPU", choices=["auto", "off", "bf16", "fp16"]))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    threads: int = field(default=0, metadata=_help(
        "CPU threads for torch (0 = torch's default); 1 is fastest for small presets on a busy machine"))
    # output
    out_dir: str = field(default="runs/train", metadata=_help("folder for checkpoint, log, curve, adapter"))
    checkpoint_every: int = field(default=100, metadata=_help("save checkpoint.pt every N steps (0 = only at the end)"))
    resume: str | None = field(default=None, metadata=_help(
        "checkpoint to resume from; 'auto' = out_dir/checkpoint.pt if present"))
    adapter_out: str | None = field(default=None, metadata=_help("adapter file to write (default out_dir/adapter.pt)"))
    sam2_weights_out: str | None = field(default=None, metadata=_help(
        "with --train-all: trained SAM2 part, official format (default out_dir/sam2_weights.pt)"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    # held-out evaluation at the end (through the SaliencyTracker)
    val_data: str | None = field(default=None, metadata=_help("held-out dataset root for the final evaluation"))
    val_layout: str = field(default="auto", metadata=_help("held-out dataset layout", choices=list(LAYOUTS)))
    val_split: str = field(default="test", metadata=_help("held-out dataset split"))
    val_videos: int = field(default=0, metadata=_help("generated 2-D held-out videos (0 = none)"))
    val_rendered_videos: int = field(default=0, metadata=_help(
        "rendered held-out videos (val split: objects and layouts training never sees; 0 = none)"))

    @property
    def depth_config(self) -> DepthConfig:
        """The depth normalisation the model trains on (and its adapter file records)."""
        return DepthConfig(min_m=self.depth_min_m, max_m=self.depth_max_m, scale=self.depth_scale)

    @property
    def generation_seed(self) -> int:
        """The seed the rendered scenes and 2-D videos are generated from (``data_seed`` or ``seed``)."""
        return self.seed if self.data_seed is None else self.data_seed

    def __post_init__(self) -> None:
        for name in ("sam2_checkpoint", "init_adapter", "data", "out_dir", "adapter_out", "sam2_weights_out", "val_data"):
            if getattr(self, name):
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        if self.resume and self.resume != "auto":
            self.resume = os.path.expanduser(self.resume)
        positive = ("image_size", "clip_length", "clip_stride", "steps", "batch_size", "accumulate", "synthetic_frames",
                    "num_memory_frames", "rendered_frames", "rendered_height", "rendered_width")
        bad = {name: getattr(self, name) for name in positive if getattr(self, name) < 1}
        if bad:
            raise ValueError(f"TrainConfig fields must be >= 1: {bad}")
        if self.synthetic_videos is None:
            self.synthetic_videos = 0 if self.data or self.rendered_videos else 8
        nonneg = ("threads", "warmup_steps", "checkpoint_every", "val_videos", "val_rendered_videos", "weight_decay",
                  "grad_clip", "bce_weight", "iou_weight", "object_weight", "intermediate_weight", "rendered_videos",
                  "synthetic_videos")
        bad = {name: getattr(self, name) for name in nonneg if getattr(self, name) < 0}
        if bad:
            raise ValueError(f"TrainConfig fields must be >= 0: {bad}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        _ = self.depth_config  # building it checks range and scale (DepthConfig.__post_init__)
        if self.adapter_kind not in ADAPTERS:
            raise ValueError(f"unknown adapter kind {self.adapter_kind!r}; choose one of {sorted(ADAPTERS)}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if not (self.data or self.rendered_videos or self.synthetic_videos):
            raise ValueError("no training videos: give --data, --rendered-videos or --synthetic-videos")
        if self.preset != "test" and not self.sam2_checkpoint and not self.train_all:
            raise ValueError(f"preset {self.preset!r} needs --sam2-checkpoint (an official SAM2 checkpoint): adapters "
                             "trained on a random SAM2 are useless; only the 'test' preset or --train-all may start random")


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    adapter: Path
    sam2_weights: Path | None
    checkpoint: Path
    log_csv: Path
    loss_curve: Path
    evaluation: dict[str, dict]  # held-out set name -> evaluation report


def amp_settings(amp: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast enabled, autocast dtype, use GradScaler)."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    if amp == "off":
        return False, torch.float32, False
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs CUDA (CPU autocast supports bf16: use --amp bf16)")
    return True, (torch.float16 if amp == "fp16" else torch.bfloat16), amp == "fp16"


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rendered_videos(root: Path, videos: int, split: str, config: TrainConfig) -> list[VideoRecord]:
    """Render (once) and index ``videos`` robot-scene videos of ``split`` under ``root``."""
    from m4sam_ros.learn.scenes.generate import SceneConfig, write_dataset as write_scenes  # pybullet: when used

    scenes = SceneConfig(out=str(root), split=split, videos=videos, frames=config.rendered_frames,
                         width=config.rendered_width, height=config.rendered_height, seed=config.generation_seed,
                         progress=config.progress)
    marker = root / f".complete-{videos}-{split}-{config.generation_seed}-{scenes.height}x{scenes.width}x{scenes.frames}"
    if not marker.exists():
        write_scenes(scenes)
        marker.touch()
    dataset = open_dataset(root, layout="generic")
    dataset.raise_on_errors()
    return [v for v in dataset.videos if v.name.startswith(f"{split}_")][:videos]


def synthetic_videos(root: Path, videos: int, config: TrainConfig, split_seed: int) -> list[VideoRecord]:
    """Write (once) and index ``videos`` synthetic videos under ``root``."""
    synth = SyntheticConfig(height=config.synthetic_height, width=config.synthetic_width,
                            frames=config.synthetic_frames, missing_depth_prob=config.synthetic_missing_depth_prob)
    marker = root / f".complete-{videos}-{split_seed}-{synth.height}x{synth.width}x{synth.frames}-{synth.missing_depth_prob}"
    if not marker.exists():
        write_dataset(root, videos, synth, split_seed=split_seed)
        marker.touch()
    dataset = open_dataset(root, layout="generic")
    return [v for v in dataset.videos if v.name.startswith("synthetic_")][:videos]


def model_to_train(config: TrainConfig) -> M4SAM:
    """The model to train: ``load_m4sam`` (seeded init, official SAM2 weights, optional starting
    adapter, the depth normalisation asked for), everything trainable with ``--train-all``."""
    if not config.sam2_checkpoint and not config.train_all:
        LOG.warning("no --sam2-checkpoint: the frozen SAM2 part of preset %r is RANDOM (tests only)", config.preset)
    model = load_m4sam(config.preset, config.image_size, sam2_checkpoint=config.sam2_checkpoint,
                       adapter=config.init_adapter, adapter_kind=config.adapter_kind, seed=config.seed,
                       depth=config.depth_config)
    if config.train_all:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model


def micro_batch_seed(seed: int, micro_index: int) -> int:
    """The torch RNG seed of one micro-batch: a pure function of the run's seed and the
    micro-batch's index in the whole run (whichever process runs it, resumed or not)."""
    return int(np.random.SeedSequence([seed, micro_index]).generate_state(1, dtype=np.uint64)[0])


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [torch.from_numpy(a.astype(np.int64)) if isinstance(a, np.ndarray) else a
                       for a in np.random.get_state()]}  # int64: weights_only-safe
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(tuple(a.numpy().astype(np.uint32) if isinstance(a, torch.Tensor) else a for a in state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():  # the GPUs both machines have
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def run_clip(model: M4SAM, batch: ClipBatch, num_memory_frames: int) -> Iterator[tuple[int, DecoderOutput]]:
    """Stream B clips through the model with the tracker's own per-frame step: frame 0 is the
    prompt-free initialisation (no memory) and becomes the conditioning frame, later frames
    attend to the memory. Yields (t, decoder output of frame t)."""
    memory = model.new_memory(zero_shot=False, num_memory_frames=num_memory_frames)
    for t in range(batch.rgb.shape[1]):
        frame = model.encode(batch.rgb[:, t], batch.depth[:, t], batch.present[:, t])
        yield t, memory.step(model, frame, conditioning=t == 0)


class Trainer:
    """One training run: model, data, optimiser state and the loop (see module docstring)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)  # process-wide, like any torch thread setting
        self.world: World = world_from_environment()
        self.device = self.world.device(resolve_device(config.device))
        join(self.world, self.device)
        self.autocast, self.amp_dtype, use_scaler = amp_settings(config.amp, self.device)
        if config.train_all and self.world.is_main:
            LOG.warning("=" * 78)
            LOG.warning("--train-all: training ALL %s parameters, SAM2 included (NOT frozen).", config.preset)
            LOG.warning("For the synthetic demo only; real training freezes SAM2 and trains adapters + fusion.")
            LOG.warning("=" * 78)
        self.model = model_to_train(config).to(self.device)
        self.named_trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.world.broadcast_parameters(list(self.named_trainable.values()))
        decay = [p for p in self.named_trainable.values() if p.ndim > 1]
        no_decay = [p for p in self.named_trainable.values() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.weights = LossWeights(config.bce_weight, config.iou_weight, config.object_weight,
                                   config.intermediate_weight)
        self.sampler = ClipSampler(self.world.in_turn(self._training_videos), config.clip_length, seed=config.seed,
                                   stride=config.clip_stride, flip_prob=config.flip_prob)
        self.step = 0
        self._nonfinite_steps = 0
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        counts = sum(p.numel() for p in self.named_trainable.values())
        if self.world.distributed:
            LOG.info("rank %d of %d (local rank %d) on %s", self.world.rank, self.world.world_size,
                     self.world.local_rank, self.device)
        if self.world.is_main:
            LOG.info("training %d tensors (%d parameters) of preset %s at %d px on %s; %d clip windows; amp %s; "
                     "%d clips per step", len(self.named_trainable), counts, config.preset, config.image_size,
                     self.device, self.sampler.windows, self.amp_dtype if self.autocast else "off",
                     config.batch_size * self.micro_batches_per_step)

    def _training_videos(self) -> list[VideoRecord]:
        """--data's videos, then the rendered ones, then the generated 2-D ones."""
        config, videos = self.config, []
        if config.data is not None:
            dataset = open_dataset(config.data, config.layout, config.split, config.depth_folder)
            for problem in dataset.problems:
                LOG.warning("%s", problem)
            dataset.raise_on_errors()
            videos += dataset.videos
        if config.rendered_videos:
            videos += rendered_videos(self.out_dir / "rendered" / "train", config.rendered_videos, "train", config)
        if config.synthetic_videos:
            videos += synthetic_videos(self.out_dir / "synthetic" / "train", config.synthetic_videos, config,
                                      config.generation_seed)
        return videos

    # ---- one clip ------------------------------------------------------------------------
    def clip_loss(self, batch: ClipBatch) -> dict[str, torch.Tensor]:
        """Mean losses over the clip frames that have GT."""
        sums = {k: torch.zeros((), device=self.device) for k in ("bce", "iou", "object", "inter", "total")}
        for t, decoded in run_clip(self.model, batch, self.config.num_memory_frames):
            losses = frame_losses(decoded.high_res_logits, decoded.object_score_logits, batch.gt[:, t], self.weights,
                                  decoded.aux_logits)
            weight = batch.has_gt[:, t].float()  # (B,) frames without GT add nothing
            for key in sums:
                sums[key] = sums[key] + (losses[key] * weight).sum()
        return {k: v / batch.has_gt.sum().clamp(min=1) for k, v in sums.items()}

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches in one optimizer step over all ranks (the global batch, in micro-batches)."""
        return self.config.accumulate * self.world.world_size

    def _micro_batch(self, micro_index: int) -> ClipBatch:
        """The clips of the ``micro_index``-th micro-batch of the run (counted over all ranks)."""
        size = self.config.batch_size
        depth = self.model.config.depth
        clips = [self.sampler.load(self.sampler.clip(micro_index * size + b), depth) for b in range(size)]
        return collate_clips(clips, self.config.image_size).to(self.device)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``accumulate`` micro-batches of this rank (see module docstring)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = {k: 0.0 for k in ("loss", "bce", "iou", "object", "inter")}
        world = self.world
        for micro in range(self.config.accumulate):
            index = (self.step * self.config.accumulate + micro) * world.world_size + world.rank
            torch.manual_seed(micro_batch_seed(self.config.seed, index))
            batch = self._micro_batch(index)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
                losses = self.clip_loss(batch)
            self.scaler.scale(losses["total"] / self.config.accumulate).backward()
            for key in ("total", "bce", "iou", "object", "inter"):
                totals["loss" if key == "total" else key] += float(losses[key].detach()) / self.config.accumulate
        params = list(self.named_trainable.values())
        world.average_gradients(params)  # before unscaling: every rank then sees the same inf/NaN
        totals = world.mean(totals, self.device)
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")  # inf: measure only
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        if math.isfinite(grad_norm) or self.scaler.is_enabled():  # GradScaler skips such steps itself
            self._nonfinite_steps = 0
            self.scaler.step(self.optimizer)
        else:
            self._skip_nonfinite_step(grad_norm)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        totals["grad_norm"] = grad_norm
        return totals

    def _skip_nonfinite_step(self, grad_norm: float) -> None:
        """A NaN/inf gradient would poison every weight it touches for the rest of the run:
        leave the weights and the optimizer state as they are, and stop once it keeps happening."""
        self._nonfinite_steps += 1
        LOG.warning("step %d: gradient norm %s, update skipped (%d in a row)", self.step + 1, grad_norm,
                    self._nonfinite_steps)
        if self._nonfinite_steps >= MAX_NONFINITE_STEPS:
            raise FloatingPointError(f"training diverged: {self._nonfinite_steps} steps in a row had non-finite "
                                     f"gradients (up to step {self.step + 1}); start again with a lower --lr or "
                                     "--grad-clip, or another --seed (the last checkpoint still holds finite weights)")

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
                "config": dataclasses.asdict(self.config),
                "micro_batches_per_step": self.micro_batches_per_step, "world_size": self.world.world_size,
                "trainable": {n: p.detach().cpu().clone() for n, p in self.named_trainable.items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state()}

    def save_checkpoint(self, path: Path | None = None) -> Path:
        """Atomic write (a crash mid-save leaves the previous checkpoint intact); rank 0 only
        (every rank holds the same state)."""
        path = Path(path or self.out_dir / "checkpoint.pt")
        if self.world.is_main:
            tmp = path.with_suffix(".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Rank 0 reads the checkpoint and sends it to the others (machines need not share a disk)."""
        path = Path(path)
        state, error = self.world.broadcast(_read_checkpoint(path) if self.world.is_main else (None, None))
        if error is not None:
            raise error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not an m4sam training checkpoint (adapter files cannot be resumed; "
                                  "use --init-adapter to fine-tune from one)")
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has training checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        saved, current = state["config"], dataclasses.asdict(self.config)
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v and k not in _RESUMABLE_CHANGES}
        if changed:
            listed = "; ".join(f"{k}: checkpoint={a!r}, now={b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"cannot resume {path} exactly with different settings: {listed}")
        saved_micro = state.get("micro_batches_per_step", saved.get("accumulate"))
        if saved_micro != self.micro_batches_per_step:
            raise ValueError(f"cannot resume {path} exactly: it ran {saved_micro} micro-batches per step (accumulate x "
                             f"world size), this run {self.micro_batches_per_step} (accumulate {self.config.accumulate} x "
                             f"world size {self.world.world_size}); keep accumulate x world size")
        missing = set(self.named_trainable) ^ set(state["trainable"])
        if missing:
            raise CheckpointError(f"{path} trainable tensors differ from this model's: {sorted(missing)[:8]}")
        with torch.no_grad():
            for name, parameter in self.named_trainable.items():
                parameter.copy_(state["trainable"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.world.is_main:
            LOG.info("resumed %s at step %d", path, self.step)

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        checkpoint_path = self.out_dir / "checkpoint.pt"
        resume = config.resume
        if resume == "auto":
            resume = self.world.broadcast(str(checkpoint_path) if checkpoint_path.exists() else None)
        if resume:
            self.load_checkpoint(resume)
        main = self.world.is_main
        log_path = self.out_dir / "train_log.csv"
        rows = _read_log(log_path, up_to_step=self.step) if resume and main else []
        start, started = self.step, time.perf_counter()
        clips_per_step = config.batch_size * self.micro_batches_per_step
        last = {"loss": float("nan")}
        with (open(log_path, "w", newline="") if main else contextlib.nullcontext()) as handle, \
                tqdm(total=config.steps, initial=self.step, desc="train", unit="step",
                     disable=not (config.progress and main), dynamic_ncols=True) as bar:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS) if main else None
            if writer:
                writer.writeheader()
                writer.writerows(rows)
            while self.step < config.steps:
                last = self.train_step()
                elapsed = time.perf_counter() - started
                rate = (self.step - start) * clips_per_step / max(elapsed, 1e-9)
                if writer:
                    values = {k: f"{last[k]:.6g}" for k in ("lr", "loss", "bce", "iou", "object", "inter", "grad_norm")}
                    writer.writerow({"step": self.step, **values, "clips_per_s": f"{rate:.3f}",
                                     "elapsed_s": f"{elapsed:.2f}"})
                    handle.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", clips_s=f"{rate:.2f}")
                bar.update(1)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
        self.save_checkpoint(checkpoint_path)
        adapter = Path(config.adapter_out or self.out_dir / "adapter.pt")
        sam2_weights = Path(config.sam2_weights_out or self.out_dir / "sam2_weights.pt") if config.train_all else None
        curve, evaluation = self.out_dir / "loss_curve.png", {}
        if main:
            plot_loss_curve(log_path, curve)
            adapter, sam2_weights = self.export_weights()
        self.world.barrier()  # every file is written before any rank returns; rank 0 alone evaluates
        if main:
            evaluation = self._evaluate()
        seconds = time.perf_counter() - started
        if main:
            LOG.info("done: %d steps in %.1f s, last loss %.4f, adapter %s", self.step, seconds, last["loss"], adapter)
        return TrainResult(self.step, float(last["loss"]), seconds, adapter, sam2_weights, checkpoint_path, log_path,
                           curve, evaluation)

    def export_weights(self) -> tuple[Path, Path | None]:
        """The adapter file, and with --train-all the SAM2 part in official format."""
        adapter = save_adapter(self.model, self.config.adapter_out or self.out_dir / "adapter.pt")
        sam2_weights = None
        if self.config.train_all:
            sam2_weights = Path(self.config.sam2_weights_out or self.out_dir / "sam2_weights.pt")
            sam2_weights.parent.mkdir(parents=True, exist_ok=True)
            state = self.model.state_dict()
            torch.save({"model": {k: state[k].detach().cpu().clone() for k in self.model.frozen_keys()}}, sam2_weights)
            LOG.warning("--train-all: trained SAM2 weights written to %s (load with --sam2-checkpoint)", sam2_weights)
        return adapter, sam2_weights

    def _evaluate(self) -> dict[str, dict]:
        """Score each configured held-out set through the SaliencyTracker: {set name: report}."""
        config = self.config
        held_out: dict[str, list[VideoRecord]] = {}
        if config.val_data is not None:
            dataset = open_dataset(config.val_data, config.val_layout, config.val_split, config.depth_folder)
            dataset.raise_on_errors()
            held_out["data"] = dataset.videos
        if config.val_rendered_videos:
            held_out["rendered"] = rendered_videos(self.out_dir / "rendered" / "val", config.val_rendered_videos, "val",
                                                   config)
        if config.val_videos:
            held_out["synthetic"] = synthetic_videos(self.out_dir / "synthetic" / "val", config.val_videos, config,
                                                     config.generation_seed + 1000)
        if not held_out:
            return {}
        from m4sam_ros.learn.evaluate import evaluate_model  # evaluation imports the tracker stack lazily
        return {name: evaluate_model(self.model, videos, self.out_dir / "eval" / name, device=self.device,
                                     num_memory_frames=config.num_memory_frames, progress=config.progress,
                                     title=f"{config.preset} after {self.step} steps, held-out {name} videos")
                for name, videos in held_out.items()}


def _read_checkpoint(path: Path) -> tuple[dict | None, Exception | None]:
    """(state, None), or (None, the error) for the caller to raise on every rank."""
    if not path.is_file():
        return None, FileNotFoundError(f"resume checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as error:
        return None, CheckpointError(f"{path} is not a readable training checkpoint: {type(error).__name__}: {error}")


def _read_log(path: Path, up_to_step: int) -> list[dict]:
    """Rows of an earlier run's log up to the resumed step (later rows are re-done)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]


def plot_loss_curve(log_path: Path, png_path: Path) -> Path:
    """Loss per step and its moving average, from the CSV log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 5:
        window = max(5, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, lw=1.8, label=f"mean of {window}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (BCE + IoU + object [+ intermediate])")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return png_path


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; see ``TrainConfig``. Under ``torchrun``, one rank of a
    distributed run (the process group stays joined for further runs of this process)."""
    return Trainer(config).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, TrainConfig, "YAML file of TrainConfig fields (flags given here override it)")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(TrainConfig, args)
        result = train(config)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as error:
        LOG.error("%s", error)
        return 2
    finally:
        leave()  # the verb is the process's last run: leave the process group (never re-joined after)
    if not world_from_environment().is_main:
        return 0  # rank 0 reports
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; final loss {result.final_loss:.4f}")
    print(f"adapter: {result.adapter}")
    if result.sam2_weights:
        print(f"SAM2 weights (--train-all): {result.sam2_weights}")
    print(f"checkpoint: {result.checkpoint}\nlog: {result.log_csv}\nloss curve: {result.loss_curve}")
    for name, report in result.evaluation.items():
        print(f"held-out evaluation ({name}): {report['paths']['markdown']}")
        print(Path(report["paths"]["markdown"]).read_text())
    return 0
