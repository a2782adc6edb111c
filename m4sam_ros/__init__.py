"""m4sam_ros: RGB-D video salient object detection (M4-SAM on SAM2) for ROS 2.

The generated message modules (``m4sam_ros.msg``) are installed by rosidl next to
this package. In a colcon install both halves share one directory; in the
development venv they live apart, so the package path is extended to find them.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
