"""Dataclass configs as CLI flags and YAML files, with one source of defaults and help.

Each config field carries its help text in ``field(metadata={"help": ...})``; this module
turns the fields into ``--kebab-case`` flags (the default is printed from the dataclass)
and resolves a run's settings as: dataclass defaults < ``--config`` YAML < explicit flags.
Flags default to ``argparse.SUPPRESS`` so that "not given" and "given the default value"
stay distinguishable and a YAML value is never silently overridden by a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import yaml


def _field_type(cls: type, field: dataclasses.Field) -> tuple[type, bool]:
    """(base type, optional) of a field annotated ``T`` or ``T | None``."""
    hint = typing.get_type_hints(cls)[field.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = [a for a in args if a is not type(None)]
        if len(base) != 1:
            raise TypeError(f"{cls.__name__}.{field.name}: only T | None unions are supported, got {hint}")
        return base[0], True
    return hint, False


def _parse_optional(base: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else base(text)
    parse.__name__ = base.__name__
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, config_help: str) -> None:
    """``--config FILE`` plus one flag per field of ``cls``."""
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    for field in dataclasses.fields(cls):
        base, optional = _field_type(cls, field)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = f"{field.metadata.get('help', '')} (default: {default})"
        flag = "--" + field.name.replace("_", "-")
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif base in (int, float, str):
            kind = _parse_optional(base) if optional else base
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS,
                                metavar=base.__name__.upper() if choices is None else None, help=help_text)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: unsupported field type {base}")


def load_yaml_config(path: Path, cls: type) -> dict:
    """Field values from a YAML mapping; unknown keys are an error naming them."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a YAML mapping of {cls.__name__} fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return values


def config_from_args(cls: type, args: argparse.Namespace):
    """Defaults < YAML (``args.config``) < explicit flags -> an instance of ``cls``."""
    values = load_yaml_config(args.config, cls) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)
