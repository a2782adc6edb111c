"""RealSense camera with depth aligned to colour + m4sam_saliency + (optionally) RViz2.

    ros2 launch m4sam_ros realsense.launch.py sam2_checkpoint:=$HOME/models/sam2.1_hiera_tiny.pt rviz:=true

Starts ``realsense2_camera_node`` (realsense-ros 4.x parameter names) as
/<camera_namespace>/<camera_name>, feeds its colour image, aligned depth and colour
camera_info to the saliency node, and shows overlay, mask and 3D boxes in RViz2.
Model/engine arguments left empty keep the value of ``config_file``.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "m4sam_ros"

# (name, default, description): the table of launch arguments.
ARGUMENTS = [
    ("camera_namespace", "camera", "Namespace of the RealSense node"),
    ("camera_name", "camera", "Name of the RealSense node (topics: /<camera_namespace>/<camera_name>/...)"),
    ("serial_no", "", "Serial number of the camera to open (empty: the first one found)"),
    ("color_profile", "640,480,30", "RealSense rgb_camera.color_profile: width,height,fps"),
    ("depth_profile", "640,480,30", "RealSense depth_module.depth_profile: width,height,fps"),
    ("config_file", "", "Parameter file of the saliency node (empty: the installed config/m4sam.yaml)"),
    ("preset", "", "model.preset override: hiera_t | hiera_s | hiera_b+ | hiera_l | test (empty: from config_file)"),
    ("sam2_checkpoint", "", "model.sam2_checkpoint override: path of the official SAM2.1 .pt file"),
    ("adapter", "", "model.adapter override: trained adapter weights (empty: zero-shot)"),
    ("image_size", "", "model.image_size override: square model input, multiple of 32 (default 0: the "
                       "adapter's trained size, 512 without an adapter)"),
    ("backend", "", "engine.backend override: auto | pytorch | onnxruntime | tensorrt"),
    ("device", "", "engine.device override: auto | cpu | cuda | cuda:N"),
    ("num_threads", "", "engine.num_threads override: torch CPU threads (lower it when other nodes share the CPU)"),
    ("autostart", "", "lifecycle.autostart override: false leaves the managed node unconfigured for a lifecycle "
                      "manager"),
    ("rviz", "false", "Start RViz2 with config/m4sam.rviz"),
    ("log_level", "info", "Log level of the saliency node"),
]

OVERRIDES = {"preset": ("model.preset", "str"), "sam2_checkpoint": ("model.sam2_checkpoint", "str"),
             "adapter": ("model.adapter", "str"), "image_size": ("model.image_size", "int"),
             "backend": ("engine.backend", "str"), "device": ("engine.device", "str"),
             "num_threads": ("engine.num_threads", "int"), "autostart": ("lifecycle.autostart", "bool")}


def _typed(arg: str, text: str, kind: str):
    """The launch argument's text as the parameter's type, so a typo stops the launch naming the argument
    (launch_ros checks, but does not convert, plain values)."""
    if kind == "str":
        return ParameterValue(text, value_type=str)  # keeps a numeric-looking path a string
    try:
        return int(text) if kind == "int" else {"true": True, "false": False}[text.lower()]
    except (ValueError, KeyError):
        expected = "an integer" if kind == "int" else "true or false"
        raise RuntimeError(f"launch argument {arg}:={text!r} must be {expected}") from None


def _require_package(package: str, hint: str) -> None:
    """Stop with what to do when a package the launch needs is not installed (launch itself only
    says "package not found")."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory(package)
    except (PackageNotFoundError, OSError):  # OSError: no ROS environment sourced at all
        raise RuntimeError(f"{package} is not installed: {hint}") from None


def _camera_topic(namespace: str, name: str, suffix: str) -> str:
    parts = [p.strip("/") for p in (namespace, name, suffix) if p.strip("/")]
    return "/" + "/".join(parts)


def _nodes(context):
    _require_package("realsense2_camera", "sudo apt install ros-$ROS_DISTRO-realsense2-camera (realsense-ros 4.x), "
                                          "or start your camera yourself and use saliency.launch.py with its topics")
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    share = FindPackageShare(PACKAGE).perform(context)
    config_file = value["config_file"] or os.path.join(share, "config", "m4sam.yaml")
    namespace, name = value["camera_namespace"], value["camera_name"]
    camera_parameters = {
        # the driver's TF frames are named after this parameter, not the node name (as rs_launch.py passes it)
        "camera_name": ParameterValue(name, value_type=str),
        "enable_color": True, "enable_depth": True, "align_depth.enable": True, "enable_sync": True,
        "pointcloud.enable": False,
        "rgb_camera.color_profile": ParameterValue(value["color_profile"], value_type=str),
        "depth_module.depth_profile": ParameterValue(value["depth_profile"], value_type=str),
    }
    if value["serial_no"]:
        camera_parameters["serial_no"] = ParameterValue(value["serial_no"], value_type=str)
    overrides = {param: _typed(arg, value[arg], kind) for arg, (param, kind) in OVERRIDES.items() if value[arg]}
    nodes = [
        Node(package="realsense2_camera", executable="realsense2_camera_node", namespace=namespace, name=name,
             parameters=[camera_parameters], output="screen", emulate_tty=True),
        Node(package=PACKAGE, executable="saliency_node", name="m4sam_saliency",
             parameters=[config_file, overrides],
             remappings=[
                 ("rgb/image", _camera_topic(namespace, name, "color/image_raw")),
                 ("depth/image", _camera_topic(namespace, name, "aligned_depth_to_color/image_raw")),
                 ("rgb/camera_info", _camera_topic(namespace, name, "color/camera_info")),
             ],
             arguments=["--ros-args", "--log-level", value["log_level"]],
             output="screen", emulate_tty=True),
    ]
    if value["rviz"].lower() == "true":
        # the driver names its colour optical frame <camera_name>_color_optical_frame
        nodes.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                          arguments=["-d", os.path.join(share, "config", "m4sam.rviz"),
                                     "-f", f"{name}_color_optical_frame"]))
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
