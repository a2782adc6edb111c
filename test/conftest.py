"""Session-wide settings: ROS 2 isolation (a domain of our own, discovery kept on this
machine) and one torch thread.

Set before any test imports rclpy or starts a process, so parallel test runs on one
machine (or a robot on the same network) never cross-talk with ours.
"""
import os
import threading

import pytest

os.environ["ROS_DOMAIN_ID"] = str(1 + (os.getpid() + 37) % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The suite runs tiny models on a small shared CPU, where extra intra-op threads only
    contend (measured 5-100x slower with two threads than with one on 2 busy cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ros():
    """An rclpy node of the test process, spun in the background (one per test module)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("m4sam_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield node
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    spinner.join(timeout=5)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node_logs")




@pytest.fixture(scope="session")
def colcon_install(tmp_path_factory):
    """A real ``colcon build`` of this package against the venv's ROS 2 wheels: its install space
    (built once per session, for the colcon and launch tests)."""
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    repo, venv = Path(__file__).resolve().parents[1], Path(sys.prefix)
    workspace = tmp_path_factory.mktemp("colcon_ws")
    (workspace / "src").mkdir()
    (workspace / "src" / "m4sam_ros").symlink_to(repo)
    env = dict(os.environ, CMAKE_PREFIX_PATH=f"{venv}:{sysconfig.get_paths()['purelib']}", AMENT_PREFIX_PATH=str(venv))
    result = subprocess.run(
        [str(venv / "bin" / "colcon"), "build", "--event-handlers", "console_direct-",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return workspace / "install"
