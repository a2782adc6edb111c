"""The node's parameter table: descriptors, checks, config/m4sam.yaml and the README stay equal to it."""
from __future__ import annotations

import pytest
import yaml
from rcl_interfaces.msg import ParameterType

from helpers import CONFIG, ROOT
from m4sam_ros.model import build_m4sam
from m4sam_ros.model.checkpoint import save_adapter
from m4sam_ros.depth import DepthConfig
from m4sam_ros.ros.model_loader import StartupError, build_tracker
from m4sam_ros.model.builder import DEFAULT_IMAGE_SIZE
from m4sam_ros.ros.parameters import PARAMETERS, NodeParameters, check, defaults, markdown_table


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_readme_parameter_table_is_the_declared_one():
    assert markdown_table().strip() in (ROOT / "README.md").read_text(), \
        "README's parameter table differs from the code: paste `python -m m4sam_ros.ros.parameters`"


def test_config_yaml_equals_declared_defaults():
    config = yaml.safe_load(CONFIG.read_text())
    assert list(config) == ["/**/m4sam_saliency"]
    values = _flatten(config["/**/m4sam_saliency"]["ros__parameters"])
    assert values == defaults()
    for spec in PARAMETERS:  # same type too: 1 vs 1.0 would be an INTEGER vs DOUBLE override
        assert type(values[spec.name]) is type(spec.default), spec.name


def test_parameter_table_descriptors_and_checks():
    by_name = {p.name: p for p in PARAMETERS}
    threshold = by_name["mask_threshold"].descriptor()
    assert threshold.type == ParameterType.PARAMETER_DOUBLE and not threshold.read_only
    assert (threshold.floating_point_range[0].from_value, threshold.floating_point_range[0].to_value) == (0.01, 0.99)
    size = by_name["model.image_size"].descriptor()
    assert size.read_only and size.integer_range[0].step == 32
    assert "tensorrt" in by_name["engine.backend"].descriptor().additional_constraints
    assert all(p.description for p in PARAMETERS)
    assert check("engine.backend", "cuda") and "one of" in check("engine.backend", "cuda")
    assert check("engine.device", "cuda:1") is None and "cuda:N" in check("engine.device", "gpu")
    assert check("model.preset", "test") is None and check("model.preset", "hiera_x")
    settings = NodeParameters.from_values(defaults())
    assert settings.sync.slop == by_name["sync.slop"].default and settings.model.preset == "hiera_t"
    with pytest.raises(ValueError, match="missing parameters: mask_threshold"):
        NodeParameters.from_values({k: v for k, v in defaults().items() if k != "mask_threshold"})
    assert "`mask_threshold` | double | 0.5 |" in markdown_table()


def test_image_size_zero_follows_the_adapter_and_builds_the_model_at_that_size(tmp_path):
    """model.image_size 0 (the default) runs an adapter at the size it was trained at, and SAM2
    alone at 512; a set size wins."""
    adapter = save_adapter(build_m4sam("test", image_size=192), tmp_path / "adapter.pt")
    values = dict(defaults(), **{"model.preset": "test", "model.adapter": str(adapter), "engine.backend": "pytorch"})
    settings = NodeParameters.from_values(values)
    assert settings.model.image_size == 0
    tracker, description = build_tracker(settings)
    assert tracker.model.config.image_size == 192 and " 192px learned" in description
    _, description = build_tracker(NodeParameters.from_values(dict(values, **{"model.image_size": 128})))
    assert " 128px learned" in description  # a set size wins
    _, description = build_tracker(NodeParameters.from_values(dict(values, **{"model.adapter": ""})))
    assert f" {DEFAULT_IMAGE_SIZE}px zero_shot" in description and DEFAULT_IMAGE_SIZE == 512


def test_depth_normalisation_follows_the_adapter_and_learned_mode_refuses_another(tmp_path):
    """depth.* 0 / "" (the defaults) take the adapter file's normalisation; one set otherwise is a
    start-up error in learned mode, and SAM2 alone (zero-shot, depth only for the prior) takes it."""
    log = DepthConfig(min_m=0.2, max_m=8.0, scale="log")
    adapter = save_adapter(build_m4sam("test", image_size=64, depth=log), tmp_path / "adapter.pt")
    values = dict(defaults(), **{"model.preset": "test", "model.adapter": str(adapter), "engine.backend": "pytorch"})
    tracker, description = build_tracker(NodeParameters.from_values(values))
    assert tracker.config.depth == log and description.endswith("depth log 0.2-8 m")
    with pytest.raises(StartupError, match="trained on"):
        build_tracker(NodeParameters.from_values(dict(values, **{"depth.scale": "linear"})))
    tracker, _ = build_tracker(NodeParameters.from_values(dict(values, **{"model.adapter": "", "depth.max_m": 4.0})))
    assert tracker.mode == "zero_shot" and tracker.config.depth == DepthConfig(max_m=4.0)
