"""Launch files and the RViz config.

The static checks always run (launch_ros is not pip-installable, so most CI here lacks it);
the tests that load and run the launch files need launch_ros and skip without it.
"""
import ast
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import sourced_environment
from m4sam_ros.ros.parameters import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {name: ROOT / "launch" / f"{name}.launch.py" for name in ("realsense", "saliency")}
RVIZ = ROOT / "config" / "m4sam.rviz"
DECLARED = {p.name for p in PARAMETERS}
NODE_INPUTS = {"rgb/image", "depth/image", "rgb/camera_info"}


def _module(path: Path) -> ast.Module:
    source = path.read_text()
    compile(source, str(path), "exec")  # syntax errors fail here with file and line
    return ast.parse(source)


def _assigned(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"module-level {name} not found")


def _function(tree: ast.Module, name: str):
    """Compile one top-level pure function of a launch file on its own and return it."""
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), name, "exec"), namespace)
    return namespace[name]


def _strings(tree: ast.Module) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize("name", sorted(LAUNCH))
def test_launch_file_structure(name):
    tree = _module(LAUNCH[name])
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    arguments = _assigned(tree, "ARGUMENTS")
    names = [a[0] for a in arguments]
    assert len(names) == len(set(names)), f"duplicate launch arguments in {name}"
    for arg_name, default, description in arguments:
        assert isinstance(default, str) and description.strip(), f"{arg_name} needs a default and a description"
    overrides = _assigned(tree, "OVERRIDES")
    assert set(overrides) <= set(names)
    assert {param for param, _ in overrides.values()} <= DECLARED, "launch overrides must target declared parameters"
    kinds = {p.name: p.type_name for p in PARAMETERS}
    names_of = {"string": "str", "int": "int", "bool": "bool", "double": "float"}
    for arg, (param, kind) in overrides.items():
        assert names_of[kinds[param]] == kind, f"{arg} overrides {param} ({kinds[param]}) as {kind}"
    assert {"image_size", "num_threads", "autostart"} <= set(overrides), "size, threads and lifecycle from launch"
    strings = _strings(tree)
    assert {"saliency_node", "m4sam_saliency", "m4sam_ros"} <= strings
    assert NODE_INPUTS <= strings, "every node input must be remapped"


@pytest.mark.parametrize("name", sorted(LAUNCH))
def test_launch_arguments_become_typed_parameters(name):
    """launch_ros refuses an int parameter given as the text "64": the launch file converts, and a typo
    stops the launch naming the argument."""
    typed = _function(_module(LAUNCH[name]), "_typed")
    assert typed("image_size", "64", "int") == 64 and typed("autostart", "False", "bool") is False
    with pytest.raises(RuntimeError, match="num_threads:='two' must be an integer"):
        typed("num_threads", "two", "int")
    with pytest.raises(RuntimeError, match="autostart:='yes please' must be true or false"):
        typed("autostart", "yes please", "bool")


def test_realsense_launch_says_how_to_get_a_missing_driver(monkeypatch, tmp_path):
    """Without realsense2_camera, launch alone says "package not found": ours says what to install."""
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))  # a sourced ROS environment without the driver
    require = _function(_module(LAUNCH["realsense"]), "_require_package")
    with pytest.raises(RuntimeError, match="no_such_camera_driver is not installed: apt install it"):
        require("no_such_camera_driver", "apt install it")


def test_launch_files_offer_the_same_model_and_engine_overrides():
    """Launch files stay self-contained (a copy each), so this keeps the copies equal."""
    trees = [_module(path) for path in LAUNCH.values()]
    overrides = [_assigned(tree, "OVERRIDES") for tree in trees]
    assert overrides[0] == overrides[1]
    rows = [{a[0]: a for a in _assigned(tree, "ARGUMENTS") if a[0] in overrides[0]} for tree in trees]
    assert rows[0] == rows[1]


def test_realsense_launch_camera_settings_and_topics():
    tree = _module(LAUNCH["realsense"])
    arguments = {a[0]: a[1] for a in _assigned(tree, "ARGUMENTS")}
    assert arguments["camera_namespace"] == "camera" and arguments["camera_name"] == "camera"
    assert arguments["rviz"] == "false"
    assert {"config_file", "sam2_checkpoint", "adapter", "backend", "device", "preset"} <= set(arguments)
    strings = _strings(tree)
    # realsense-ros 4.x names (rs_launch.py): the aligned depth topic only exists with align_depth.enable
    assert {"realsense2_camera", "realsense2_camera_node", "align_depth.enable", "rgb_camera.color_profile",
            "depth_module.depth_profile", "rviz2"} <= strings
    camera_topic = _function(tree, "_camera_topic")
    assert camera_topic("camera", "camera", "color/image_raw") == "/camera/camera/color/image_raw"
    assert (camera_topic("camera", "camera", "aligned_depth_to_color/image_raw")
            == "/camera/camera/aligned_depth_to_color/image_raw")
    assert camera_topic("", "front", "color/camera_info") == "/front/color/camera_info"
    assert camera_topic("/robot/", "cam", "color/image_raw") == "/robot/cam/color/image_raw"


def test_realsense_launch_passes_camera_name_to_the_driver():
    """realsense-ros 4.x names its TF frames after the camera_name *parameter* (default "camera"),
    not the node name; without it RViz's fixed frame <camera_name>_color_optical_frame would not exist."""
    tree = _module(LAUNCH["realsense"])
    nodes = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_nodes")
    camera_parameters = next(n.value for n in ast.walk(nodes) if isinstance(n, ast.Assign)
                             and any(isinstance(t, ast.Name) and t.id == "camera_parameters" for t in n.targets))
    keys = {k.value for k in camera_parameters.keys if isinstance(k, ast.Constant)}
    assert "camera_name" in keys


def test_saliency_launch_defaults_match_realsense_topics():
    arguments = {a[0]: a[1] for a in _assigned(_module(LAUNCH["saliency"]), "ARGUMENTS")}
    assert arguments["rgb_topic"] == "/camera/camera/color/image_raw"
    assert arguments["depth_topic"] == "/camera/camera/aligned_depth_to_color/image_raw"
    assert arguments["camera_info_topic"] == "/camera/camera/color/camera_info"


def test_rviz_config_shows_the_outputs():
    config = yaml.safe_load(RVIZ.read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "camera_color_optical_frame"
    displays = {(d["Class"], d.get("Topic", {}).get("Value")) for d in manager["Displays"]}
    assert ("rviz_default_plugins/Image", "/saliency/overlay") in displays
    assert ("rviz_default_plugins/Image", "/saliency/mask") in displays
    assert ("rviz_default_plugins/MarkerArray", "/saliency/markers") in displays
    markers = next(d for d in manager["Displays"] if d["Class"] == "rviz_default_plugins/MarkerArray")
    assert set(markers["Namespaces"]) == {"saliency_boxes", "saliency_labels"}


# -- with launch_ros (a ROS 2 installation) ------------------------------------------------

def _node_actions(path: Path, arguments: dict[str, str]):
    """Resolve a launch file's OpaqueFunction with ``arguments`` and return its Node actions."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node

    description = get_launch_description_from_python_launch_file(str(path))
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    nodes = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)  # fills defaults not given in ``arguments``
        elif isinstance(entity, OpaqueFunction):
            nodes += [e for e in entity.visit(context) or [] if isinstance(e, Node)]
    return nodes, context


def _ros_environment(request, monkeypatch) -> None:
    """launch_ros importable (else skip: not installable from pip), and this package installed
    where launch looks for it: a colcon install space of it, sourced into this process."""
    pytest.importorskip("launch_ros")
    install = request.getfixturevalue("colcon_install")
    for key, value in sourced_environment(install).items():
        monkeypatch.setenv(key, value)
    # the installed executables start with ``#!/usr/bin/env python3``: the venv's, as for a user who activated it
    monkeypatch.setenv("PATH", f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.launch
def test_realsense_launch_resolves_nodes_and_remappings(request, monkeypatch):
    _ros_environment(request, monkeypatch)
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("realsense2_camera")
    except PackageNotFoundError:
        pytest.skip("realsense2_camera is not installed (sudo apt install ros-$ROS_DISTRO-realsense2-camera)")
    nodes, context = _node_actions(LAUNCH["realsense"], {"camera_namespace": "cam_ns", "camera_name": "d435",
                                                          "rviz": "true"})
    executables = [n.node_executable for n in nodes]
    assert executables == ["realsense2_camera_node", "saliency_node", "rviz2"]
    saliency = nodes[1]
    saliency._perform_substitutions(context)
    remaps = dict(saliency.expanded_remapping_rules)
    assert remaps == {"rgb/image": "/cam_ns/d435/color/image_raw",
                      "depth/image": "/cam_ns/d435/aligned_depth_to_color/image_raw",
                      "rgb/camera_info": "/cam_ns/d435/color/camera_info"}


@pytest.mark.launch
@pytest.mark.slow
def test_saliency_launch_starts_the_node(request, monkeypatch):
    _ros_environment(request, monkeypatch)
    import rclpy
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    domain = 1 + (os.getpid() + 50) % 100
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH["saliency"])),
        launch_arguments={"preset": "test", "image_size": "64", "num_threads": "1",
                          "namespace": "launch_test"}.items())]))
    found = threading.Event()

    def probe() -> None:
        """Look for the node in the graph, then end the launch (LaunchService.shutdown is thread-safe)."""
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        try:
            node = rclpy.create_node("launch_probe", context=context)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not found.is_set():
                if ("m4sam_saliency", "/launch_test") in node.get_node_names_and_namespaces():
                    found.set()
                time.sleep(0.5)
        finally:
            rclpy.try_shutdown(context=context)
            service.shutdown()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    code = service.run()  # the main thread: launch installs signal handlers
    prober.join(timeout=30)
    assert found.is_set(), ("saliency.launch.py did not bring up /launch_test/m4sam_saliency within 60 s; "
                            "the launch output above says why")
    assert code == 0
