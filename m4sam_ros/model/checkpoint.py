"""Checkpoint I/O: official SAM2 weights in, small adapter files in and out.

* Official SAM2 / SAM2.1 checkpoints (``{"model": state_dict}``) load STRICTLY into the
  frozen SAM2 part: any missing, unexpected or mis-shaped key is an error naming the keys
  (a hiera_s file given to a hiera_t preset must not half-load).
* Adapter files hold only the trainable tensors (the model's ``adapter``) and the model
  config they were trained with; loading refuses a model whose SAM2 architecture or
  adapter config differs. MoE-LoRA files of versions 1 and 2 hold M4-SAM's earlier encoder
  (depth through the whole trunk, fusion on the FPN levels): no conversion exists, they are
  refused with that reason. Other adapters' version 2 files read unchanged.
* Every tensor loaded must be finite: NaN/inf (a corrupt byte, a diverged run) is refused,
  naming the tensors, instead of serving empty masks that look healthy.
* Everything is read with ``torch.load(weights_only=True)``; unreadable files raise
  ``CheckpointError`` with the path and the cause instead of a raw pickle traceback.
"""
from __future__ import annotations

from pathlib import Path

import torch

from m4sam_ros.model.config import M4SAMConfig
from m4sam_ros.model.m4sam import M4SAM

ADAPTER_FORMAT = "m4sam-adapter"
ADAPTER_VERSION = 3
# (version, adapter kind) this code cannot read, and why; version 1 knew only MoE-LoRA
_EARLIER_ENCODER = "M4-SAM's earlier encoder (depth through the whole trunk, fusion on the FPN levels)"
_RETIRED = {(1, "moe_lora"): _EARLIER_ENCODER, (2, "moe_lora"): _EARLIER_ENCODER}
_SHOW = 8  # keys named in an error message
# keys renamed within a format version: M4-SAM's depth head kept its one stride-16 conv as
# ``down`` until depth through one stage needed a chain of them
_RENAMED = {f"adapter.depth_levels.down.{p}": f"adapter.depth_levels.down.0.{p}" for p in ("weight", "bias")}


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not fit the model."""


def _names(keys: set[str] | list[str]) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle, EOF and key errors all mean the same to the user
        cause = (str(error).splitlines() or ["(no message)"])[0][:200]
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              f"torch.save file): {type(error).__name__}: {cause}") from error


def _shape_of(value: object) -> str:
    """A tensor's shape, or what the value is instead (a file may hold non-tensors)."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f"({type(value).__name__}, not a tensor)"


def _check_tensors(path: Path, what: str, expected: dict[str, torch.Tensor], given: dict) -> None:
    """Exact key set and shapes, or a CheckpointError naming the offending keys."""
    missing, unexpected = set(expected) - set(given), set(given) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    wrong = [f"{k} {_shape_of(given[k])} != {tuple(v.shape)}" for k, v in expected.items()
             if k in given and (not isinstance(given[k], torch.Tensor) or given[k].shape != v.shape)]
    if wrong:
        problems.append(f"shape mismatches (file != model): {'; '.join(wrong[:_SHOW])}")
    if problems:
        raise CheckpointError(f"{path} does not fit the {what}: " + " | ".join(problems))
    nonfinite = [k for k in expected if given[k].is_floating_point() and not torch.isfinite(given[k]).all()]
    if nonfinite:  # a flipped byte or a diverged run: the model would serve garbage, and say nothing
        raise CheckpointError(f"{path} holds non-finite values (NaN/inf) in {len(nonfinite)} tensor(s) of the "
                              f"{what}: {_names(nonfinite)}; the file is corrupt or from a diverged training run")


def load_sam2_checkpoint(model: M4SAM, path: str | Path) -> None:
    """Load an official SAM2/SAM2.1 checkpoint strictly into the frozen SAM2 part."""
    path = Path(path)
    payload = _read(path)
    if isinstance(payload, dict) and payload.get("format") == ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is an M4-SAM adapter file, not a SAM2 checkpoint; load it with load_adapter")
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        keys = _names(list(payload)) if isinstance(payload, dict) else "-"
        raise CheckpointError(f"{path} is not a SAM2 checkpoint: expected a dict with a 'model' state dict, "
                              f"got {type(payload).__name__} with keys {keys}")
    state = payload["model"]
    model_state = model.state_dict()
    frozen = {k: model_state[k] for k in model.frozen_keys()}
    _check_tensors(path, f"SAM2 part of preset {model.config.name!r} (sam2_version {model.config.sam2_version})",
                   frozen, state)
    result = model.load_state_dict(state, strict=False)
    # only the trainable adapter/fusion tensors may remain unset
    assert not result.unexpected_keys and set(result.missing_keys) == set(model.trainable_state_dict()), result
    model.sam2_file = str(path)


def save_adapter(model: M4SAM, path: str | Path) -> Path:
    """Write the trainable tensors and the model config to ``path`` (a small file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}}
    torch.save(payload, path)
    return path


def read_adapter_config(path: str | Path) -> M4SAMConfig:
    """The model config an adapter file was trained with (to build a matching model)."""
    return _adapter_payload(Path(path))[0]


def _adapter_payload(path: Path) -> tuple[M4SAMConfig, dict]:
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        hint = " (it looks like a SAM2 checkpoint: load it with load_sam2_checkpoint)" if (
            isinstance(payload, dict) and "model" in payload) else ""
        raise CheckpointError(f"{path} is not an M4-SAM adapter file{hint}")
    version, config = payload.get("version"), payload.get("config")
    kind = (config.get("adapter") or {}).get("kind", "moe_lora") if isinstance(config, dict) else None
    if (version, kind) in _RETIRED:
        raise CheckpointError(f"{path} has adapter format version {version}: weights of {_RETIRED[version, kind]}, "
                              f"which this code no longer builds and cannot convert; retrain the adapter with "
                              f"`m4sam train`")
    if version == 2:  # version 3 changed MoE-LoRA only
        payload = dict(payload, version=ADAPTER_VERSION)
    if payload.get("version") != ADAPTER_VERSION:
        raise CheckpointError(f"{path} has adapter format version {payload.get('version')}, "
                              f"this code reads version {ADAPTER_VERSION}")
    try:
        config = M4SAMConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an invalid model config: {error}") from error
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no 'state_dict' of adapter tensors")
    return config, {_RENAMED.get(key, key): value for key, value in payload["state_dict"].items()}


def load_adapter(model: M4SAM, path: str | Path) -> None:
    """Load trained adapter weights; refuse a model built with another architecture or adapter."""
    path = Path(path)
    config, state = _adapter_payload(path)
    differences = model.config.architecture_differences(config)
    if differences:
        listed = "; ".join(f"{k}: model={mine!r}, file={theirs!r}" for k, (mine, theirs) in differences.items())
        raise CheckpointError(f"{path} was trained with another model config ({config.name!r}) than this model "
                              f"({model.config.name!r}): {listed}")
    _check_tensors(path, f"adapter ({model.config.adapter.kind}) of the model", model.trainable_state_dict(), state)
    model.load_state_dict(state, strict=False)
    model.adapter_file = str(path)
