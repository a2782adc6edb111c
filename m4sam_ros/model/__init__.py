"""M4-SAM modules on top of SAM2 (torch only; nothing here imports ROS)."""
