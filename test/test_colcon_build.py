"""The ROS-user route: `colcon build` of this package, then imports from the install space.

Runs a real colcon build against the ROS 2 pip wheels of the venv (a ROS install would
provide the same CMake packages from /opt/ros/<distro>).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = [pytest.mark.colcon, pytest.mark.slow]


@pytest.fixture(scope="module")
def install_space(colcon_install: Path) -> Path:
    return colcon_install


def run_sourced(install: Path, code: str) -> str:
    """Run Python code in a shell that sourced the install space, as a ROS user would."""
    script = f'. "{install}/setup.bash" && "{sys.executable}" -c "$CODE"'
    result = subprocess.run(["bash", "-c", script], env=dict(os.environ, CODE=code),
                            cwd=install, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_install_space_layout(install_space: Path) -> None:
    share = install_space / "m4sam_ros" / "share" / "m4sam_ros"
    lib = install_space / "m4sam_ros" / "lib" / "m4sam_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "realsense.launch.py").is_file()
    assert (share / "config" / "m4sam.yaml").is_file()
    assert (share / "msg" / "SalientObjectArray.msg").is_file()
    for executable in ("saliency_node", "m4sam", "m4sam_player"):
        assert os.access(lib / executable, os.X_OK), f"{executable} not installed for `ros2 run`"


def test_messages_and_node_import_from_install_space(install_space: Path) -> None:
    out = run_sourced(install_space, (
        "import m4sam_ros, m4sam_ros.msg, m4sam_ros.ros.saliency_node as node\n"
        "from m4sam_ros.msg import SalientObject, SalientObjectArray\n"
        "from rclpy.serialization import serialize_message, deserialize_message\n"
        "msg = SalientObjectArray(objects=[SalientObject(id=7, has_3d=True)])\n"
        "msg.header.frame_id = 'camera_color_optical_frame'\n"
        "back = deserialize_message(serialize_message(msg), SalientObjectArray)\n"
        "assert back.objects[0].id == 7 and back.header.frame_id == msg.header.frame_id\n"
        "print(m4sam_ros.msg.__file__)\n"
        "print(node.__file__)\n"
        "print(callable(node.main))\n"))
    msg_file, node_file, has_main = out.split()
    assert msg_file.startswith(str(install_space)), msg_file
    assert node_file.startswith(str(install_space)), node_file
    assert has_main == "True"
