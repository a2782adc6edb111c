"""Streaming RGB-D saliency: one ``step`` per frame, a bounded memory bank, re-initialisation.

``SaliencyTracker.step(rgb, depth|None, stamp)`` runs preprocess -> encoder -> memory
attention -> decoder -> memory encoder -> post-process and returns a ``SaliencyResult``.
It is free of ROS; the node, the player and evaluation all call it.

The memory bank keeps SAM2's streaming memory bounded (sam2#196 is what happens otherwise):
the conditioning frame, the last N frames' spatial memories, and the object pointers of
the last ``max_obj_ptrs_in_encoder - 1`` frames. SAM2 reads temporal positions from frame
index differences, so the bank re-indexes every step: the current frame sits at
``min(frames since the conditioning frame, max_obj_ptrs_in_encoder)`` and the conditioning
frame at 0. Indices, tensor count and bytes therefore stay constant however long the
stream runs; the only departure from SAM2's video predictor is that the conditioning
frame's pointer never looks further away than that cap.

Modes: ``learned`` (trained adapters: depth goes through the encoder, the first frame's
mask comes from the model itself - pseudo-guided initialisation) and ``zero_shot``
(official SAM2 weights only: SAM2's own encoder sees RGB, as SAM2 was trained - adapters
and fusion bypassed - and the first frame's mask is the depth/centre pseudo-prior, which
SAM2 then propagates).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from m4sam_ros.depth import DepthConfig, depth_to_metres, normalize_depth
from m4sam_ros.engines.base import EncoderEngine
from m4sam_ros.engines.torch_backend import TorchEncoder
from m4sam_ros.model.checkpoint import load_adapter, load_sam2_checkpoint
from m4sam_ros.model.m4sam import (IMAGENET_MEAN, IMAGENET_STD, DecoderOutput, EncodedFrame, M4SAM, MemoryView,
                                   build_m4sam)
from m4sam_ros.postprocess import CameraIntrinsics, ObjectExtractor, PostprocessConfig, SalientObject
from m4sam_ros.prior import PriorConfig, saliency_prior

MODES = ("auto", "learned", "zero_shot")
REINIT_REASONS = ("start", "reset", "stamp_backwards", "gap", "lost")
STAGES = ("preprocess", "encoder", "memory_attention", "decoder", "memory_encoder", "postprocess")
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)

MemoryAttentionFn = Callable[[EncodedFrame, "MemoryView | None"], torch.Tensor]


def _model_input(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] -> (3, S, S) float32: bilinear resize, ImageNet-normalised."""
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return ((image - _MEAN) / _STD).transpose(2, 0, 1)


def encoder_inputs(rgb: np.ndarray, depth_normalized: np.ndarray | None,
                   image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tracker's frame preprocessing; training, evaluation and engine parity should call it
    too, so every path feeds the encoder exactly what the node does.

    rgb (H, W, 3) uint8 RGB; depth_normalized (H, W) float32 [0, 1] from ``normalize_depth``
    (aligned to rgb) or None. Returns float32 arrays rgb (1, 3, S, S), depth (1, 3, S, S)
    (zeros when absent) and modality_present (1, 2) = [1, depth given].
    """
    rgb_in = _model_input(rgb.astype(np.float32) * np.float32(1.0 / 255.0), image_size)
    if depth_normalized is None:
        depth_in = np.zeros_like(rgb_in)
    else:
        depth_in = _model_input(np.repeat(depth_normalized[:, :, None].astype(np.float32), 3, axis=2), image_size)
    present = np.array([[1.0, 0.0 if depth_normalized is None else 1.0]], dtype=np.float32)
    return np.ascontiguousarray(rgb_in[None]), np.ascontiguousarray(depth_in[None]), present


@dataclass
class SaliencyResult:
    stamp: float  # seconds
    probability: np.ndarray  # (H, W) float32 [0, 1] at the input resolution
    mask: np.ndarray  # (H, W) uint8 0/1
    objects: list[SalientObject]
    object_score: float  # model's object-presence score (sigmoid) for this frame
    used_depth: bool  # a depth frame was given and used (encoder in learned mode; prior + 3D)
    reinitialized: str | None  # None, or why memory was re-initialised on this frame (REINIT_REASONS)
    memory_frames: int  # frames with spatial memory in the bank (conditioning + recent)
    timings_ms: dict[str, float]  # per stage (STAGES) and "total"


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings.

    image_size: model input size (square); must equal the model's.
    num_memory_frames: recent frames whose spatial memory is kept (1 .. num_maskmem - 1).
    gap_timeout_s: a stamp gap longer than this re-initialises (the scene may have changed).
    lost_score_threshold / lost_patience_frames: object score below the threshold for this
        many consecutive frames -> re-initialise on the next frame ("lost").
    mode: "auto" (learned when the model has an adapter file loaded, else zero_shot),
        "learned" or "zero_shot" (see module docstring).
    prior_threshold: zero-shot conditioning mask = prior >= this.
    """

    image_size: int = 512
    num_memory_frames: int = 6
    gap_timeout_s: float = 1.0
    lost_score_threshold: float = 0.1
    lost_patience_frames: int = 15
    mode: str = "auto"
    prior_threshold: float = 0.5
    depth: DepthConfig = field(default_factory=DepthConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        if self.num_memory_frames < 1:
            raise ValueError(f"num_memory_frames must be >= 1, got {self.num_memory_frames}")
        if not self.gap_timeout_s > 0:
            raise ValueError(f"gap_timeout_s must be > 0 seconds, got {self.gap_timeout_s}")
        if not 0.0 <= self.lost_score_threshold <= 1.0:
            raise ValueError(f"lost_score_threshold must be in [0, 1], got {self.lost_score_threshold}")
        if self.lost_patience_frames < 1:
            raise ValueError(f"lost_patience_frames must be >= 1, got {self.lost_patience_frames}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 < self.prior_threshold <= 1.0:
            raise ValueError(f"prior_threshold must be in (0, 1], got {self.prior_threshold}")
        if self.prior.near_is_bright != self.depth.near_is_bright:
            raise ValueError("prior.near_is_bright must equal depth.near_is_bright (the prior reads normalised depth)")


@dataclass
class MemoryEntry:
    """One frame's memory: spatial features (dropped once too old) and its object pointer."""

    features: torch.Tensor | None  # (1, mem_dim, S/16, S/16)
    pos_enc: torch.Tensor | None  # (1, mem_dim, S/16, S/16)
    obj_ptr: torch.Tensor  # (1, C)

    def as_sam2(self) -> dict:
        if self.features is None:
            return {"obj_ptr": self.obj_ptr}
        return {"maskmem_features": self.features, "maskmem_pos_enc": [self.pos_enc], "obj_ptr": self.obj_ptr}

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.features, self.pos_enc, self.obj_ptr) if t is not None]


class MemoryBank:
    """Conditioning frame + last N spatial memories + recent object pointers, bounded."""

    def __init__(self, num_memory_frames: int, num_maskmem: int, max_obj_ptrs: int):
        if not 1 <= num_memory_frames <= num_maskmem - 1:
            raise ValueError(f"num_memory_frames must be in [1, {num_maskmem - 1}] (SAM2 has temporal encodings "
                             f"for num_maskmem - 1 = {num_maskmem - 1} recent frames), got {num_memory_frames}")
        self.num_memory_frames = num_memory_frames
        self.num_maskmem = num_maskmem
        self.max_distance = max_obj_ptrs  # cap on frame-index distances shown to SAM2
        self.conditioning: MemoryEntry | None = None
        self.recent: deque[MemoryEntry] = deque(maxlen=max(max_obj_ptrs - 1, num_memory_frames))  # newest last
        self.frames_since_conditioning = 0  # capped at max_distance

    def clear(self) -> None:
        self.conditioning = None
        self.recent.clear()
        self.frames_since_conditioning = 0

    def set_conditioning(self, entry: MemoryEntry) -> None:
        """A new conditioning frame replaces the whole memory."""
        self.clear()
        self.conditioning = entry

    def add(self, entry: MemoryEntry) -> None:
        """Append a tracked frame; memories older than N keep only their object pointer."""
        if self.conditioning is None:
            raise RuntimeError("MemoryBank.add before a conditioning frame was set")
        self.recent.append(entry)
        if len(self.recent) > self.num_memory_frames:
            old = self.recent[-self.num_memory_frames - 1]
            old.features = old.pos_enc = None
        self.frames_since_conditioning = min(self.frames_since_conditioning + 1, self.max_distance)

    def view(self) -> MemoryView:
        """The bank in SAM2's layout for the *next* frame, re-indexed to bounded indices."""
        if self.conditioning is None:
            raise RuntimeError("MemoryBank.view with no conditioning frame")
        current = min(self.frames_since_conditioning + 1, self.max_distance)
        recent = {}
        for distance, entry in enumerate(reversed(self.recent), start=1):
            if distance >= current:
                break  # would collide with the conditioning frame's index (only after the cap)
            if entry.features is None and distance <= self.num_maskmem - 1:
                continue  # SAM2 would read spatial memory at this distance; N < num_maskmem - 1 drops it
            recent[current - distance] = entry.as_sam2()
        return MemoryView(frame_index=current,
                          output_dict={"cond_frame_outputs": {0: self.conditioning.as_sam2()},
                                       "non_cond_frame_outputs": recent},
                          num_frames=self.max_distance + 1)

    def __len__(self) -> int:
        """Frames with spatial memory (conditioning + recent)."""
        if self.conditioning is None:
            return 0
        return 1 + sum(entry.features is not None for entry in self.recent)

    def tensors(self) -> list[torch.Tensor]:
        entries = ([self.conditioning] if self.conditioning is not None else []) + list(self.recent)
        return [t for entry in entries for t in entry.tensors()]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a numpy array (H, W, 3) uint8, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"rgb must be (H, W, 3) uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")


def _check_depth(depth: np.ndarray) -> np.ndarray:
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"depth must be a numpy array (H, W) or None, got {type(depth).__name__}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise ValueError(f"depth must be (H, W) or (H, W, 1), got shape {depth.shape}")
    if depth.dtype not in (np.uint16, np.float32, np.float64, np.uint8):
        raise ValueError(f"depth must be uint16 millimetres, float32/float64 metres or uint8 benchmark depth, "
                         f"got dtype {depth.dtype}")
    return depth


def resolve_mode(mode: str, model: M4SAM) -> str:
    """"auto" -> "learned" when the model has an adapter file loaded, else "zero_shot"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode if mode != "auto" else ("learned" if model.adapter_file else "zero_shot")


class SaliencyTracker:
    """Per-frame RGB-D salient object tracking with M4-SAM (see module docstring)."""

    def __init__(self, model: M4SAM, config: TrackerConfig, device: str = "cpu", *,
                 encoder: EncoderEngine | None = None, memory_attention: MemoryAttentionFn | None = None):
        """``encoder`` / ``memory_attention`` replace the model's own encoder (PyTorch) and
        ``model.condition_on_memory`` (same signature), e.g. by ONNX Runtime or TensorRT engines."""
        if config.image_size != model.config.image_size:
            raise ValueError(f"TrackerConfig.image_size ({config.image_size}) must equal the model's image_size "
                             f"({model.config.image_size})")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.model = model.to(self.device).eval()
        self.config = config
        self.mode = resolve_mode(config.mode, model)
        self.bank = MemoryBank(config.num_memory_frames, model.num_maskmem, model.max_obj_ptrs_in_encoder)
        self.extractor = ObjectExtractor(config.postprocess)
        self._encoder = encoder if encoder is not None else TorchEncoder(self.model, self.device)
        self._condition_on_memory = memory_attention if memory_attention is not None else self.model.condition_on_memory
        self._pending: str | None = "start"
        self._last_stamp: float | None = None
        self._low_score_frames = 0

    @classmethod
    def from_settings(cls, *, preset: str = "test", image_size: int = 512, sam2_checkpoint: str | None = None,
                      adapter: str | None = None, device: str = "cpu", seed: int = 0,
                      config: TrackerConfig | None = None) -> "SaliencyTracker":
        """Build the model (``seed`` fixes a random init), load the official SAM2 checkpoint and
        the adapter file if given. ``image_size`` overrides ``config.image_size``."""
        model = build_m4sam(preset, image_size=image_size, seed=seed)
        if sam2_checkpoint:
            load_sam2_checkpoint(model, sam2_checkpoint)
        if adapter:
            load_adapter(model, adapter)
        config = dataclasses.replace(config or TrackerConfig(), image_size=image_size)
        return cls(model, config, device)

    def set_postprocess(self, config: PostprocessConfig) -> None:
        """Change thresholds between frames (call from the thread that calls ``step``); IDs are kept."""
        self.config = dataclasses.replace(self.config, postprocess=config)
        self.extractor.config = config

    def reset(self) -> None:
        """Forget memory and object IDs; the next frame re-initialises with reason "reset"."""
        self.bank.clear()
        self.extractor.reset()
        if self._pending != "start":  # before the first frame a reset changes nothing
            self._pending = "reset"
        self._last_stamp = None
        self._low_score_frames = 0

    def _reinit_reason(self, stamp: float) -> str | None:
        if self._pending is not None:
            return self._pending
        if self._last_stamp is not None and stamp < self._last_stamp:
            return "stamp_backwards"
        if self._last_stamp is not None and stamp - self._last_stamp > self.config.gap_timeout_s:
            return "gap"
        if self._low_score_frames >= self.config.lost_patience_frames:
            return "lost"
        return None

    def _now(self) -> float:
        """A stage boundary: on CUDA, wait for queued kernels so each stage is charged its own time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.inference_mode()
    def step(self, rgb: np.ndarray, depth: np.ndarray | None, stamp: float,
             intrinsics: CameraIntrinsics | None = None) -> SaliencyResult:
        """rgb (H, W, 3) uint8 RGB; depth (H', W') uint16 mm | float32 m | None; any size.

        Depth must be aligned to the RGB image; another size is resized (nearest) to the RGB
        size, and ``intrinsics`` are those of the RGB image. Results are at the RGB size.
        """
        t0 = time.perf_counter()
        _check_rgb(rgb)
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            raise ValueError(f"stamp must be a finite number of seconds, got {stamp!r}")
        if intrinsics is not None and not isinstance(intrinsics, CameraIntrinsics):
            raise TypeError(f"intrinsics must be CameraIntrinsics or None, got {type(intrinsics).__name__}")
        height, width = rgb.shape[:2]
        depth_norm = depth_valid = depth_m = None
        if depth is not None:
            depth = _check_depth(depth)
            if depth.shape != (height, width):  # aligned depth of another size: nearest keeps holes holes
                depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
            depth_norm, depth_valid = normalize_depth(depth, self.config.depth)  # (H, W) [0, 1], (H, W) bool
            depth_m = depth_to_metres(depth) if depth.dtype != np.uint8 else None  # 8-bit depth has no scale
        reason = self._reinit_reason(float(stamp))
        if reason == "stamp_backwards":
            self.extractor.reset()  # a bag loop or a new recording: old IDs mean nothing

        # zero-shot: SAM2's own encoder sees RGB (adapters untrained); depth feeds the prior and 3D
        depth_to_encoder = depth_norm if self.mode == "learned" else None
        arrays = encoder_inputs(rgb, depth_to_encoder, self.config.image_size)
        rgb_in = torch.from_numpy(arrays[0]).to(self.device)
        depth_in = present = None  # only the RGB-D path reads them: no zeros copied to the GPU
        if depth_to_encoder is not None:
            depth_in, present = (torch.from_numpy(a).to(self.device) for a in arrays[1:])
        prior_mask = None
        if reason is not None and self.mode == "zero_shot":
            size = self.config.image_size
            prior = saliency_prior(depth_norm, depth_valid, (size, size), self.config.prior)  # (S, S)
            prior_mask = torch.from_numpy(prior >= self.config.prior_threshold).to(self.device, torch.float32)
        t1 = self._now()

        model = self.model
        if self.mode == "zero_shot":
            frame = self._encoder.encode_sam2(rgb_in)
        elif depth_in is None:  # depth dropped out: one modality, no depth pass
            frame = self._encoder.encode_rgb(rgb_in)
        else:
            frame = self._encoder(rgb_in, depth_in, present)
        t2 = self._now()

        if prior_mask is not None:
            t3 = t2  # no memory attention: the prior mask is the conditioning frame's output
            decoded = model.mask_as_output(frame, prior_mask[None, None])
        else:
            pix_feat = self._condition_on_memory(frame, None if reason is not None else self.bank.view())
            t3 = self._now()
            decoded = model.decode(pix_feat, frame, is_init_frame=reason is not None)
        t4 = self._now()

        features, pos_enc = model.encode_memory(frame, decoded)
        entry = MemoryEntry(features, pos_enc, decoded.obj_ptr)
        if reason is not None:
            self.bank.set_conditioning(entry)
        else:
            self.bank.add(entry)
        t5 = self._now()

        probability, object_score = self._probability(decoded, (height, width))
        mask, objects = self.extractor(probability, depth_m, intrinsics)
        t6 = self._now()

        self._pending = None
        self._last_stamp = float(stamp)
        if reason is not None:
            self._low_score_frames = 0
        self._low_score_frames = self._low_score_frames + 1 if object_score < self.config.lost_score_threshold else 0
        marks = (t0, t1, t2, t3, t4, t5, t6)
        timings = {stage: (marks[i + 1] - marks[i]) * 1e3 for i, stage in enumerate(STAGES)}
        timings["total"] = (t6 - t0) * 1e3
        return SaliencyResult(stamp=float(stamp), probability=probability, mask=mask, objects=objects,
                              object_score=object_score, used_depth=depth_norm is not None, reinitialized=reason,
                              memory_frames=len(self.bank), timings_ms=timings)

    @staticmethod
    def _probability(decoded: DecoderOutput, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Low-res logits -> (H, W) float32 probability at the input size, and the object score."""
        logits = F.interpolate(decoded.low_res_logits, size=shape, mode="bilinear", align_corners=False)
        probability = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        return probability, float(torch.sigmoid(decoded.object_score_logits).reshape(-1)[0])
