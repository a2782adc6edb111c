"""Session-wide settings: ROS 2 isolation (a domain of our own, discovery kept on this
machine) and one torch thread.

Set before any test imports rclpy or starts a process, so parallel test runs on one
machine (or a robot on the same network) never cross-talk with ours.
"""
import os

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
