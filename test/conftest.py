"""Session-wide ROS 2 isolation: a domain of our own, discovery kept on this machine.

Set before any test imports rclpy or starts a process, so parallel test runs on one
machine (or a robot on the same network) never cross-talk with ours.
"""
import os

os.environ["ROS_DOMAIN_ID"] = str(1 + (os.getpid() + 37) % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
