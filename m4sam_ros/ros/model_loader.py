"""Start-up checks and tracker construction for the node, with errors a user can act on.

A missing checkpoint or an unavailable device is the most common first-run failure; the
node must say which file, where to get it and which parameter to set, then exit
non-zero without a traceback (``StartupError``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from m4sam_ros.depth import DepthConfig
from m4sam_ros.devices import resolve_device
from m4sam_ros.engines.base import EngineUnavailable
from m4sam_ros.engines.factory import EngineSettings, create_engines
from m4sam_ros.model.builder import load_m4sam
from m4sam_ros.model.m4sam import M4SAM
from m4sam_ros.postprocess import PostprocessConfig
from m4sam_ros.ros.parameters import DepthParameters, EngineParameters, ModelParameters, NodeParameters
from m4sam_ros.tracker import SaliencyTracker, TrackerConfig, resolve_mode

__all__ = ["CHECKPOINT_FILES", "StartupError", "build_tracker", "check_model_files", "postprocess_config",
           "node_device"]
# Official SAM2.1 release files per preset (github.com/facebookresearch/sam2, "Download Checkpoints").
CHECKPOINT_FILES = {
    "hiera_t": "sam2.1_hiera_tiny.pt",
    "hiera_s": "sam2.1_hiera_small.pt",
    "hiera_b+": "sam2.1_hiera_base_plus.pt",
    "hiera_l": "sam2.1_hiera_large.pt",
}
RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


class StartupError(RuntimeError):
    """A configuration problem the user must fix; reported as one message, no traceback."""


def _download_hint(preset: str) -> str:
    name = CHECKPOINT_FILES.get(preset)
    if name is None:  # the 'test' preset's weights come from `m4sam train`, not a release
        return "check the path, or train weights with `m4sam train`"
    return (f"get the official SAM2.1 checkpoint {name} from the SAM2 release page "
            f"(https://github.com/facebookresearch/sam2#download-checkpoints, direct link {RELEASE_URL}{name}) "
            f"and pass its path as model.sam2_checkpoint (launch argument sam2_checkpoint)")


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def check_model_files(model: ModelParameters) -> tuple[Path | None, Path | None]:
    """(checkpoint, adapter) as existing paths (None where not used); StartupError otherwise."""
    checkpoint = adapter = None
    if model.sam2_checkpoint:
        checkpoint = _expand(model.sam2_checkpoint)
        if checkpoint.is_dir():
            raise StartupError(f"model.sam2_checkpoint is a directory, not a checkpoint file: {checkpoint}; "
                               f"give the .pt file in it ({CHECKPOINT_FILES.get(model.preset, 'the .pt file')})")
        if not checkpoint.is_file():
            raise StartupError(f"SAM2 checkpoint file not found: {checkpoint} (model.sam2_checkpoint); "
                               + _download_hint(model.preset))
    elif model.preset != "test":  # 'test' without weights is the random-init model of the tests
        raise StartupError(f"model.sam2_checkpoint is empty: model.preset '{model.preset}' needs weights; "
                           + _download_hint(model.preset))
    if model.adapter:
        adapter = _expand(model.adapter)
        if adapter.is_dir():
            raise StartupError(f"model.adapter is a directory, not an adapter file: {adapter}; give the file "
                               "`m4sam train` wrote (adapter.pt in its out_dir)")
        if not adapter.is_file():
            raise StartupError(f"adapter weights not found: {adapter} (model.adapter); train them with "
                               "`m4sam train` or leave model.adapter empty for zero-shot mode")
    return checkpoint, adapter


def node_device(engine: EngineParameters) -> torch.device:
    """``engine.device`` checked against this machine; StartupError naming the fix otherwise."""
    try:
        return resolve_device(engine.device)
    except ValueError as exc:
        raise StartupError(f"engine.device: {exc}") from None


def depth_config(settings: DepthParameters, trained: DepthConfig) -> DepthConfig | None:
    """The depth.* parameters over the weights' own normalisation (0 / "auto" = the weights');
    None when none is set, so the tracker takes the model's."""
    given = {"min_m": settings.min_m, "max_m": settings.max_m, "scale": settings.scale}
    given = {name: value for name, value in given.items() if value not in (0.0, "auto")}
    return dataclasses.replace(trained, **given) if given else None


def tracker_config(settings: NodeParameters, model: M4SAM) -> TrackerConfig:
    return TrackerConfig(
        image_size=model.config.image_size,
        num_memory_frames=settings.tracker.num_memory_frames,
        gap_timeout_s=settings.tracker.gap_timeout_s,
        lost_score_threshold=settings.tracker.lost_score_threshold,
        lost_patience_frames=settings.tracker.lost_patience_frames,
        mode=settings.model.mode,
        depth=depth_config(settings.depth, model.config.depth),
        postprocess=postprocess_config(settings))


def build_tracker(settings: NodeParameters) -> tuple[SaliencyTracker, str]:
    """The tracker the settings describe, on the engines they ask for, and a one-line description."""
    checkpoint, adapter = check_model_files(settings.model)
    device = node_device(settings.engine)
    if settings.engine.num_threads > 0:
        # fewer threads than cores: OpenMP barriers stall for seconds when the cores are oversubscribed
        torch.set_num_threads(settings.engine.num_threads)
    try:
        # image_size 0: load_m4sam's default, the adapter's trained size (512 without one)
        model = load_m4sam(settings.model.preset, settings.model.image_size or None, sam2_checkpoint=checkpoint,
                           adapter=adapter, seed=settings.model.seed)
        image_size = model.config.image_size
        config = tracker_config(settings, model)
        mode = resolve_mode(config.mode, model)
        engines = create_engines(model, EngineSettings(
            backend=settings.engine.backend, device=str(device), precision=settings.engine.precision,
            cache_dir=settings.engine.cache_dir or None, threads=settings.engine.num_threads,
            cuda_graphs=settings.engine.cuda_graphs, compile=settings.engine.compile,
            num_memory_frames=config.num_memory_frames, zero_shot=mode == "zero_shot"))
        tracker = SaliencyTracker(model, config, device=engines.device, encoder=engines.encoder,
                                  memory_attention=engines.memory_attention)
    except EngineUnavailable as exc:
        raise StartupError(f"engine.backend '{settings.engine.backend}' cannot run here: {exc}") from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise StartupError(f"cannot build the model: {exc}") from None
    choice = engines.choice
    variant = f" ({model.config.adapter.kind})" if tracker.mode == "learned" else ""  # which adapter learned mode runs
    depth = tracker.config.depth
    description = (f"{settings.model.preset} {image_size}px {tracker.mode}{variant} on "
                   f"{choice.backend}/{choice.device} {choice.precision}, depth {depth.scale} "
                   f"{depth.min_m:g}-{depth.max_m:g} m")
    return tracker, description


def postprocess_config(settings: NodeParameters) -> PostprocessConfig:
    """The run-time adjustable part of the settings, as the tracker's post-processing config."""
    return PostprocessConfig(threshold=settings.mask_threshold, min_area_fraction=settings.min_object_area_fraction,
                             max_objects=settings.max_objects)
