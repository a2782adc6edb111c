"""Entry point of the ``m4sam_saliency`` node (``saliency_node``, ``ros2 run m4sam_ros saliency_node``).

Signal handling comes first, before torch and rclpy are imported, so SIGINT/SIGTERM end the
process promptly at any moment of start-up (``ros/process.py``); the node itself lives in
``ros/node.py``.
"""
from __future__ import annotations

import sys

from m4sam_ros.ros.process import StopSignals


def main(args: list[str] | None = None) -> int:
    stop = StopSignals("m4sam_saliency")
    from m4sam_ros.ros.node import run  # torch, sam2, rclpy: seconds of imports, interruptible

    stop.finish(run(stop, args))


if __name__ == "__main__":
    sys.exit(main())
