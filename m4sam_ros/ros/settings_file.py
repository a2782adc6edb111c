"""The node's settings without a node: its YAML file and ``-p name:=value`` overrides, validated.

Offline tools (``m4sam run``) must run the tracker exactly as the node would, from the same
``--params-file`` a launch file passes, without joining a ROS graph. Values are checked as
the node checks them when it declares its parameters: the type of the default (an integer
is not a double, as in ROS: write 1.0), the range, the choices.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from m4sam_ros.ros.parameters import PARAMETERS, NodeParameters, check, defaults

__all__ = ["SettingsError", "load_settings", "parse_override"]

NODE = "m4sam_saliency"
_BY_NAME = {p.name: p for p in PARAMETERS}


class SettingsError(ValueError):
    """A parameters file or override the node would refuse; the message names it."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _applies_to_node(key: str) -> bool:
    """ROS parameter-file node keys that match a node named m4sam_saliency in any namespace."""
    key = key.strip("/")
    return key in ("**", NODE, f"**/{NODE}") or key.endswith(f"/{NODE}")


def _file_values(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read parameters file {path}: {exc}") from None
    if not isinstance(tree, Mapping):
        raise SettingsError(f"{path}: expected '<node>: ros__parameters: ...' mappings")
    values: dict[str, Any] = {}
    matched = [key for key in tree if _applies_to_node(str(key))]
    for key in matched:
        section = tree[key]
        if not isinstance(section, Mapping) or not isinstance(section.get("ros__parameters"), Mapping):
            raise SettingsError(f"{path}: '{key}' has no ros__parameters mapping")
        values.update(_flatten(section["ros__parameters"]))
    if not matched:
        raise SettingsError(f"{path} has no parameters for {NODE} (node keys: {', '.join(map(str, tree))}); "
                            f"use '/**/{NODE}:' as config/m4sam.yaml does")
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """'name:=value' -> (name, value), the value read as YAML like ``--ros-args -p``."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise SettingsError(f"override {text!r} must look like name:=value (e.g. model.preset:=test)")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SettingsError(f"override {text!r}: value is not valid YAML ({exc})") from None


def _validate(name: str, value: Any, origin: str) -> None:
    spec = _BY_NAME.get(name)
    if spec is None:
        raise SettingsError(f"{origin}: unknown parameter {name!r} (see the README's parameter table)")
    expected = type(spec.default)
    if type(value) is not expected:
        hint = " (write a decimal point, e.g. 1.0, for a double)" if expected is float and type(value) is int else ""
        raise SettingsError(f"{origin}: parameter {name} must be of type {spec.type_name}, got {value!r}{hint}")
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        raise SettingsError(f"{origin}: parameter {name} = {value} is outside [{spec.range[0]}, {spec.range[1]}]")
    if (spec.range is not None and expected is int and spec.step > 1 and value not in spec.range
            and (value - spec.range[0]) % spec.step):
        raise SettingsError(f"{origin}: parameter {name} = {value} must be {spec.range[0]} + a multiple of {spec.step}")
    reason = check(name, value)
    if reason is not None:
        raise SettingsError(f"{origin}: {reason}")


def load_settings(params_file: str | Path | None = None, overrides: Iterable[str] = ()) -> NodeParameters:
    """Defaults, then the file's values for the node, then overrides (last wins), all validated."""
    values = defaults()
    sources: list[tuple[str, dict[str, Any]]] = []
    if params_file:
        sources.append((str(params_file), _file_values(Path(params_file))))
    sources.append(("-p", dict(parse_override(text) for text in overrides)))
    for origin, given in sources:
        for name, value in given.items():
            _validate(name, value, origin)
        values.update(given)
    return NodeParameters.from_values(values)
