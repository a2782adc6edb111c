"""The m4sam_saliency node alone, for any RGB-D topics or a recorded stream.

    ros2 launch m4sam_ros saliency.launch.py \\
        rgb_topic:=/my_cam/color/image_raw depth_topic:=/my_cam/aligned_depth/image_raw \\
        camera_info_topic:=/my_cam/color/camera_info sam2_checkpoint:=$HOME/models/sam2.1_hiera_tiny.pt

Defaults are the topics of a RealSense started with realsense-ros 4.x ``rs_launch.py align_depth.enable:=true``.

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
    ("rgb_topic", "/camera/camera/color/image_raw", "Colour image topic (remapped to the node's rgb/image)"),
    ("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw",
     "Depth image aligned to colour, 16UC1 mm or 32FC1 m (remapped to depth/image)"),
    ("camera_info_topic", "/camera/camera/color/camera_info",
     "camera_info of the colour image (remapped to rgb/camera_info)"),
    ("namespace", "", "Namespace of the node; outputs become <namespace>/saliency/..."),
    ("config_file", "", "Parameter file of the node (empty: the installed config/m4sam.yaml)"),
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
    ("use_sim_time", "false", "Use /clock (replaying a bag with --clock)"),
    ("log_level", "info", "Log level of the node"),
]

# launch argument -> node parameter, applied only when the argument is not empty
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


def _node(context):
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    share = FindPackageShare(PACKAGE).perform(context)
    config_file = value["config_file"] or os.path.join(share, "config", "m4sam.yaml")
    overrides = {param: _typed(arg, value[arg], kind) for arg, (param, kind) in OVERRIDES.items() if value[arg]}
    overrides["use_sim_time"] = value["use_sim_time"].lower() == "true"
    return [Node(
        package=PACKAGE, executable="saliency_node", name="m4sam_saliency", namespace=value["namespace"],
        parameters=[config_file, overrides],
        remappings=[("rgb/image", value["rgb_topic"]), ("depth/image", value["depth_topic"]),
                    ("rgb/camera_info", value["camera_info_topic"])],
        arguments=["--ros-args", "--log-level", value["log_level"]],
        output="screen", emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_node)])
