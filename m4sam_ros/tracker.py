"""Streaming RGB-D saliency: one ``step`` per frame, a bounded memory, re-initialisation policy.

``SaliencyTracker.step(rgb, depth|None, stamp)`` runs preprocess -> encoder -> the model's
memory step (memory attention -> decoder -> memory encoder, ``model.memory``) ->
post-process and returns a ``SaliencyResult``. It is free of ROS; the node, the player and
evaluation all call it. The tracker owns policy: when the memory re-initialises (start,
reset, stamps going backwards, a gap, a lost target), per-stage timings, post-processing.

Modes: ``learned`` (trained adapters: depth goes through the encoder, the first frame's
mask comes from the model itself - pseudo-guided initialisation) and ``zero_shot``
(official SAM2 weights only: SAM2's own encoder sees RGB, as SAM2 was trained - adapters
and fusion bypassed - and the first frame's mask is the most salient RGB-D candidate,
``initialisation.py``, which SAM2 then propagates exactly as its video predictor does).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from m4sam_ros.depth import DepthConfig, depth_to_metres, fit_depth, normalize_depth
from m4sam_ros.devices import resolve_device
from m4sam_ros.engines.base import EncoderEngine
from m4sam_ros.engines.torch_backend import TorchEncoder
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.m4sam import DecoderOutput, EncodedFrame, M4SAM
from m4sam_ros.model.memory import MemoryAttentionFn
from m4sam_ros.postprocess import CameraIntrinsics, ObjectExtractor, PostprocessConfig, SalientObject
from m4sam_ros.preprocess import model_inputs
from m4sam_ros.initialisation import Initialisation, choose_initial_mask
from m4sam_ros.prior import PriorConfig
from m4sam_ros.proposals import ProposalConfig
from m4sam_ros.stopwatch import Stopwatch

MODES = ("auto", "learned", "zero_shot")
REINIT_REASONS = ("start", "reset", "prompt", "stamp_backwards", "gap", "lost", "nonfinite")


class NonFiniteOutput(FloatingPointError):
    """The model produced NaN/inf for a frame; its output is withheld and the memory re-initialises."""
STAGES = ("preprocess", "encoder", "initialisation", "memory_attention", "decoder", "memory_encoder", "postprocess")
REFINEMENTS = ("auto", "always", "never")


@dataclass
class SaliencyResult:
    stamp: float  # seconds
    probability: np.ndarray  # (H, W) float32 [0, 1] at the input resolution
    mask: np.ndarray  # (H, W) uint8 0/1
    objects: list[SalientObject]
    object_score: float  # model's object-presence score (sigmoid) for this frame
    used_depth: bool  # a depth frame was given and used (encoder in learned mode; prior + 3D)
    low_res_logits: np.ndarray  # (S/4, S/4) float32: the decoder's mask logits at model resolution
    initialisation: Initialisation | None  # zero-shot (re-)initialisations: the candidates and the choice
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
    prior_threshold: the fallback zero-shot conditioning mask = prior >= this.
    depth: the depth normalisation; None = the model's (what its adapter file was trained
        on). In learned mode another one is refused: the weights only know their own.
    proposals: the RGB-D candidates of a zero-shot (re-)initialisation (``proposals.py``).
    refine_proposals: "auto" (with real SAM2 weights: a hiera preset with a checkpoint; the
        test preset's demo weights were never trained on point prompts), "always" or "never":
        SAM2's decoder re-segments the candidates.
    """

    image_size: int = 512
    num_memory_frames: int = 6
    gap_timeout_s: float = 1.0
    lost_score_threshold: float = 0.1
    lost_patience_frames: int = 15
    mode: str = "auto"
    prior_threshold: float = 0.5
    depth: DepthConfig | None = None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    refine_proposals: str = "auto"

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
        if self.refine_proposals not in REFINEMENTS:
            raise ValueError(f"refine_proposals must be one of {REFINEMENTS}, got {self.refine_proposals!r}")
        if self.depth is not None and self.prior.near_is_bright != self.depth.near_is_bright:
            raise ValueError("prior.near_is_bright must equal depth.near_is_bright (the prior reads normalised depth)")


@dataclass
class _Inputs:
    """One frame, checked and preprocessed (``SaliencyTracker._preprocess``)."""

    shape: tuple[int, int]  # (H, W) of the RGB image: results come at this size
    image: np.ndarray  # (H, W, 3) uint8 RGB as given
    intrinsics: CameraIntrinsics | None
    rgb: torch.Tensor  # (1, 3, S, S) on the tracker's device
    depth: torch.Tensor | None  # (1, 3, S, S), only where the RGB-D encoder reads it
    present: torch.Tensor | None  # (1, 2), likewise
    depth_normalized: np.ndarray | None  # (H, W) [0, 1]
    depth_valid: np.ndarray | None  # (H, W) bool
    depth_m: np.ndarray | None  # (H, W) metres with NaN holes; None without metric depth


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

    def __init__(self, model: M4SAM, config: TrackerConfig, device: str | torch.device = "cpu", *,
                 encoder: EncoderEngine | None = None, memory_attention: MemoryAttentionFn | None = None):
        """``encoder`` / ``memory_attention`` replace the model's own encoder (PyTorch) and
        ``model.condition_on_memory`` (same signature), e.g. by ONNX Runtime or TensorRT engines."""
        if config.image_size != model.config.image_size:
            raise ValueError(f"TrackerConfig.image_size ({config.image_size}) must equal the model's image_size "
                             f"({model.config.image_size})")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.mode = resolve_mode(config.mode, model)
        if self.mode == "learned" and config.depth not in (None, model.config.depth):
            raise ValueError(f"TrackerConfig.depth {config.depth} differs from the depth normalisation the model "
                             f"was trained on, {model.config.depth}; leave it unset (None) to use the model's")
        self.config = dataclasses.replace(config, depth=config.depth or model.config.depth)
        self.memory = model.new_memory(zero_shot=self.mode == "zero_shot", num_memory_frames=config.num_memory_frames)
        self.extractor = ObjectExtractor(config.postprocess)
        self._encoder = encoder if encoder is not None else TorchEncoder(self.model, self.device)
        self._memory_attention = memory_attention
        self._pending: str | None = "start"
        self._prompt: torch.Tensor | None = None  # a mask from outside for the next conditioning frame
        self._last_stamp: float | None = None
        self._low_score_frames = 0

    @classmethod
    def from_settings(cls, *, preset: str | None = None, image_size: int | None = None,
                      sam2_checkpoint: str | None = None, adapter: str | None = None, device: str = "cpu",
                      seed: int = 0, config: TrackerConfig | None = None) -> "SaliencyTracker":
        """A tracker on ``load_m4sam(preset, image_size, ...)`` (None: what the weights say); the
        model's input size overrides ``config.image_size``."""
        model = load_m4sam(preset, image_size, sam2_checkpoint=sam2_checkpoint, adapter=adapter, seed=seed)
        config = dataclasses.replace(config or TrackerConfig(), image_size=model.config.image_size)
        return cls(model, config, device)

    def set_postprocess(self, config: PostprocessConfig) -> None:
        """Change thresholds between frames (call from the thread that calls ``step``); IDs are kept."""
        self.config = dataclasses.replace(self.config, postprocess=config)
        self.extractor.config = config

    def reset(self, initial_mask: np.ndarray | None = None) -> None:
        """Forget memory and object IDs; the next frame re-initialises with reason "reset", or,
        given ``initial_mask``, from that mask (reason "prompt") instead of the model's own
        initialisation: what a detector, a grasp planner or an operator wants tracked.

        initial_mask: (H, W) of the next frame's RGB image (another size is scaled), nonzero =
        the object; it is brought to the model's input size the way SAM2's video predictor's
        ``add_new_mask`` does (antialiased bilinear, >= 0.5).
        """
        prompt = None if initial_mask is None else self._prompt_tensor(initial_mask)
        self.memory.clear()
        self.extractor.reset()
        if prompt is not None:
            self._pending = "prompt"
        elif self._pending != "start":  # before the first frame a plain reset changes nothing
            self._pending = "reset"
        self._prompt = prompt
        self._last_stamp = None
        self._low_score_frames = 0

    def _prompt_tensor(self, mask: np.ndarray) -> torch.Tensor:
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or min(mask.shape) < 1:
            raise ValueError(f"initial_mask must be an (H, W) numpy array, got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}")
        size = self.config.image_size
        prompt = torch.from_numpy(np.ascontiguousarray(mask != 0)).to(self.device, torch.float32)[None, None]
        if prompt.shape[-2:] != (size, size):
            prompt = F.interpolate(prompt, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            prompt = (prompt >= 0.5).float()
        return prompt  # (1, 1, S, S) in {0, 1}

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

    @torch.inference_mode()
    def step(self, rgb: np.ndarray, depth: np.ndarray | None, stamp: float,
             intrinsics: CameraIntrinsics | None = None) -> SaliencyResult:
        """rgb (H, W, 3) uint8 RGB; depth (H', W') uint16 mm | float32 m | None; any size.

        Depth must be aligned to the RGB image; another size is fitted to the RGB size
        (``depth.fit_depth``), and ``intrinsics`` are those of the RGB image. Results are at
        the RGB size.
        """
        watch = Stopwatch(self.device)
        with watch("preprocess"):
            inputs = self._preprocess(rgb, depth, stamp, intrinsics)
            reason = self._reinit_reason(float(stamp))
            if reason == "stamp_backwards":
                self.extractor.reset()  # a bag loop or a new recording: old IDs mean nothing
        with watch("encoder"):
            frame = self._encode(inputs)
        with watch("initialisation"):
            initial, initialisation = self._initial_mask(reason, inputs, frame)
        decoded = self.memory.step(self.model, frame, conditioning=reason is not None, mask=initial,
                                   attention=self._memory_attention, watch=watch)
        with watch("postprocess"):
            probability, object_score = self._probability(decoded, inputs.shape)
            if not (np.isfinite(object_score) and np.isfinite(probability).all()):
                self._poisoned(float(stamp))
            mask, objects = self.extractor(probability, inputs.depth_m, intrinsics)
        self._advance(reason, float(stamp), object_score)
        return SaliencyResult(stamp=float(stamp), probability=probability, mask=mask, objects=objects,
                              object_score=object_score, used_depth=inputs.depth_normalized is not None,
                              low_res_logits=decoded.low_res_logits[0, 0].float().cpu().numpy(),
                              initialisation=initialisation,
                              reinitialized=reason, memory_frames=len(self.memory), timings_ms=watch.report(STAGES))

    def _initial_mask(self, reason: str | None, inputs: _Inputs,
                      frame: EncodedFrame) -> tuple[torch.Tensor | None, Initialisation | None]:
        """The conditioning frame's mask (1, 1, S, S): a prompt when one was given; in zero-shot
        mode the most salient RGB-D candidate (or the prior); None in learned mode (the model's
        own prompt-free decoding). With the zero-shot choice and how it was made."""
        if reason is None:
            return None, None
        if reason == "prompt":
            prompt, self._prompt = self._prompt, None
            return prompt, None
        if self.mode != "zero_shot":
            return None, None
        config = self.config
        refine = self._refiner(frame) if self._refines() else None
        # a candidate must cover a few cells of the decoder's S/4 mask, or SAM2 cannot hold it
        cells = (config.image_size // 4) ** 2
        proposals = dataclasses.replace(config.proposals, min_area=max(config.proposals.min_area, 4.0 / cells))
        chosen = choose_initial_mask(inputs.image, inputs.depth_m, inputs.depth_normalized, inputs.depth_valid,
                                     inputs.intrinsics, proposals, config.prior, config.prior_threshold, refine)
        return self._prompt_tensor(chosen.mask), chosen

    def _refines(self) -> bool:
        if self.config.refine_proposals == "auto":
            return self.model.sam2_file is not None and self.model.config.name != "test"
        return self.config.refine_proposals == "always"

    def _refiner(self, frame: EncodedFrame):
        """SAM2's decoder on this frame, prompted at candidate points (``initialisation.Refiner``)."""
        size = self.config.image_size

        def refine(masks: list[np.ndarray], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            height, width = masks[0].shape
            scale = np.array([size / width, size / height], np.float32)
            prompts = torch.from_numpy((points + 0.5) * scale).to(self.device)
            logits, ious = self.model.masks_from_points(frame, prompts)
            full = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            return (full[:, 0] > 0).cpu().numpy(), ious.float().cpu().numpy()

        return refine

    def _preprocess(self, rgb: np.ndarray, depth: np.ndarray | None, stamp: float,
                    intrinsics: CameraIntrinsics | None) -> _Inputs:
        """Check the frame and prepare what the encoder and post-processing read."""
        _check_rgb(rgb)
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
            raise ValueError(f"stamp must be a finite number of seconds, got {stamp!r}")
        if intrinsics is not None and not isinstance(intrinsics, CameraIntrinsics):
            raise TypeError(f"intrinsics must be CameraIntrinsics or None, got {type(intrinsics).__name__}")
        height, width = rgb.shape[:2]
        depth_norm = depth_valid = depth_m = None
        if depth is not None:
            depth = fit_depth(_check_depth(depth), height, width)
            depth_norm, depth_valid = normalize_depth(depth, self.config.depth)  # (H, W) [0, 1], (H, W) bool
            depth_m = depth_to_metres(depth) if depth.dtype != np.uint8 else None  # 8-bit depth has no scale
        # zero-shot: SAM2's own encoder sees RGB (adapters untrained); depth feeds the prior and 3D
        depth_to_encoder = depth_norm if self.mode == "learned" else None
        arrays = model_inputs(rgb, depth_to_encoder, self.config.image_size)
        rgb_in = torch.from_numpy(arrays[0]).to(self.device)
        depth_in = present = None  # only the RGB-D path reads them: no zeros copied to the GPU
        if depth_to_encoder is not None:
            depth_in, present = (torch.from_numpy(a).to(self.device) for a in arrays[1:])
        return _Inputs((height, width), rgb, intrinsics, rgb_in, depth_in, present, depth_norm, depth_valid, depth_m)

    def _encode(self, inputs: _Inputs) -> EncodedFrame:
        if self.mode == "zero_shot":
            return self._encoder.encode_sam2(inputs.rgb)
        if inputs.depth is None:  # depth dropped out: one modality, no depth pass
            return self._encoder.encode_rgb(inputs.rgb)
        return self._encoder(inputs.rgb, inputs.depth, inputs.present)

    def _poisoned(self, stamp: float) -> None:
        """A non-finite output must not stay in memory: forget it, re-initialise on the next frame."""
        self.memory.clear()
        self._pending, self._prompt = "nonfinite", None
        self._last_stamp, self._low_score_frames = stamp, 0
        raise NonFiniteOutput(f"the model's output for the frame at {stamp:.3f} s is not finite (NaN/inf); "
                              "frame dropped, memory re-initialised on the next frame")

    def _advance(self, reason: str | None, stamp: float, object_score: float) -> None:
        """Policy state after a frame: nothing pending, the stamp, the lost-target count."""
        self._pending = None
        self._last_stamp = stamp
        if reason is not None:
            self._low_score_frames = 0
        self._low_score_frames = self._low_score_frames + 1 if object_score < self.config.lost_score_threshold else 0

    @staticmethod
    def _probability(decoded: DecoderOutput, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Low-res logits -> (H, W) float32 probability at the input size, and the object score."""
        logits = F.interpolate(decoded.low_res_logits, size=shape, mode="bilinear", align_corners=False)
        probability = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        return probability, float(torch.sigmoid(decoded.object_score_logits).reshape(-1)[0])
