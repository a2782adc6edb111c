"""The one way to get a model with its weights: preset, input size, SAM2 checkpoint, adapter file, seed."""
from __future__ import annotations

from pathlib import Path

from m4sam_ros.depth import DepthConfig
from m4sam_ros.model.checkpoint import load_adapter, load_sam2_checkpoint, read_adapter_config
from m4sam_ros.model.config import adapter_config_for
from m4sam_ros.model.m4sam import M4SAM, build_m4sam


DEFAULT_PRESET, DEFAULT_IMAGE_SIZE = "test", 512


def load_m4sam(preset: str | None = None, image_size: int | None = None, *,
               sam2_checkpoint: str | Path | None = None, adapter: str | Path | None = None,
               adapter_kind: str | None = None, depth: DepthConfig | None = None, seed: int = 0) -> M4SAM:
    """M4-SAM in eval mode: ``build_m4sam`` (``seed`` fixes the random init of whatever no file
    provides), then the official SAM2 checkpoint and the adapter file, each when given.

    Defaults follow the weights: an adapter file gives the preset, input size and depth
    normalisation it was trained with (unless given here) and always its adapter (kind and
    fields); without a file the preset is "test" at 512 px with the default depth
    normalisation and ``adapter_kind`` picks a registry entry (default: the preset's own)."""
    trained = read_adapter_config(adapter) if adapter else None
    preset = preset or (trained.name if trained else DEFAULT_PRESET)
    image_size = image_size or (trained.image_size if trained else DEFAULT_IMAGE_SIZE)
    if trained is not None:
        overrides = {"adapter": trained.adapter, "depth": depth or trained.depth}
    else:
        overrides = {"adapter": adapter_config_for(preset, adapter_kind)} if adapter_kind else {}
        if depth is not None:
            overrides["depth"] = depth
    model = build_m4sam(preset, image_size=image_size, seed=seed, **overrides)
    if sam2_checkpoint:
        load_sam2_checkpoint(model, sam2_checkpoint)
    if adapter:
        load_adapter(model, adapter)
    return model.eval()
