"""Trainable RGB-D adapters of the frozen SAM2, keyed by ``config.kind``.

Adding a model variant is adding an entry here: the model, checkpoints, engines, export,
the tracker and training only ever see the ``Adapter`` protocol (``base.py``).
"""
from __future__ import annotations

import dataclasses

from m4sam_ros.model.adapters.base import Adapter, AdapterConfig, TrunkGeometry, current_routing, routing
from m4sam_ros.model.adapters.daq import SAMDAQ, SAMDAQConfig
from m4sam_ros.model.adapters.moe_lora import MoELoRA, MoELoRAConfig

ADAPTERS: dict[str, type[Adapter]] = {MoELoRA.kind: MoELoRA, SAMDAQ.kind: SAMDAQ}

__all__ = ["ADAPTERS", "Adapter", "AdapterConfig", "MoELoRA", "MoELoRAConfig", "SAMDAQ", "SAMDAQConfig",
           "TrunkGeometry", "adapter_config_from_dict", "build_adapter", "current_routing", "routing"]


def _adapter_type(kind: str) -> type[Adapter]:
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[kind]


def adapter_config_from_dict(values: dict) -> AdapterConfig:
    """The inverse of ``AdapterConfig.to_dict``: the ``kind`` picks the config type."""
    values = dict(values)
    config_type = _adapter_type(values.pop("kind", None)).config_type
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_type.__name__} fields {unknown}")
    return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_adapter(config: AdapterConfig, geometry: TrunkGeometry) -> Adapter:
    """The adapter ``config`` describes, attached to the geometry's trunk."""
    adapter = _adapter_type(config.kind)(config, geometry)
    adapter.attach(geometry)
    return adapter
