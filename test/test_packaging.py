"""Packaging tells the truth: the hard dependencies are declared, the optional ones are extras,
and the ROS-install route in the README skips the keys rosdep cannot satisfy."""
from __future__ import annotations

import configparser
import re

from catkin_pkg.package import parse_package

from helpers import ROOT

OPTIONAL = {"onnx", "onnxscript", "onnxslim", "onnxruntime", "pysodmetrics", "matplotlib", "pyyaml"}


def _requirements(text: str) -> set[str]:
    return {re.split(r"[<>=!; ]", line.strip())[0].lower() for line in text.splitlines() if line.strip()}


def test_setup_cfg_declares_sam2_and_keeps_optional_parts_in_extras():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    hard = _requirements(config["options"]["install_requires"])
    assert {"sam2", "torch", "numpy", "opencv-python-headless", "scipy"} <= hard
    assert not hard & OPTIONAL, f"optional dependencies declared as hard: {hard & OPTIONAL}"
    extras = {name: _requirements(text) for name, text in config["options.extras_require"].items()}
    assert {"onnx", "onnxscript", "onnxslim", "onnxruntime"} <= extras["onnx"]
    assert {"pysodmetrics", "matplotlib", "pyyaml"} <= extras["learn"]


def test_package_xml_names_sam2_and_the_readme_route_skips_what_rosdep_cannot_install():
    package = parse_package(ROOT / "package.xml")
    exec_depends = {d.name for d in package.exec_depends}
    assert {"sam2", "python3-torch", "rclpy", "sensor_msgs"} <= exec_depends
    rosdep = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("rosdep install"))
    assert '--skip-keys "python3-torch sam2"' in rosdep


def test_packaged_demo_weights_stay_within_the_size_budget():
    """Both variants' demo weights ship in every checkout and wheel: 10 MB in all (README)."""
    weights = sorted((ROOT / "m4sam_ros" / "data").glob("*.pt"))
    assert {p.name for p in weights} == {"demo_sam2.pt", "demo_adapter.pt", "daq_demo_sam2.pt", "daq_demo_adapter.pt"}
    assert sum(p.stat().st_size for p in weights) <= 10_000_000
