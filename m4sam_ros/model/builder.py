"""The one way to get a model with its weights: preset, input size, SAM2 checkpoint, adapter file, seed."""
from __future__ import annotations

from pathlib import Path

from m4sam_ros.model.checkpoint import load_adapter, load_sam2_checkpoint, read_adapter_config
from m4sam_ros.model.config import adapter_config_for
from m4sam_ros.model.m4sam import M4SAM, build_m4sam


def load_m4sam(preset: str = "test", image_size: int = 512, *, sam2_checkpoint: str | Path | None = None,
               adapter: str | Path | None = None, adapter_kind: str | None = None, seed: int = 0) -> M4SAM:
    """M4-SAM in eval mode: ``build_m4sam`` (``seed`` fixes the random init of whatever no file
    provides), then the official SAM2 checkpoint and the adapter file, each when given.

    The model's adapter is the one the adapter file was trained with (its kind and fields);
    without a file, ``adapter_kind`` picks a registry entry (default: the preset's own)."""
    if adapter:
        overrides = {"adapter": read_adapter_config(adapter).adapter}
    else:
        overrides = {"adapter": adapter_config_for(preset, adapter_kind)} if adapter_kind else {}
    model = build_m4sam(preset, image_size=image_size, seed=seed, **overrides)
    if sam2_checkpoint:
        load_sam2_checkpoint(model, sam2_checkpoint)
    if adapter:
        load_adapter(model, adapter)
    return model.eval()
