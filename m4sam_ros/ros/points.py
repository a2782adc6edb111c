"""Salient pixels as a ``sensor_msgs/PointCloud2``: what a grasp planner consumes.

Layout: x, y, z FLOAT32 at bytes 0, 4, 8 and ``rgb`` at 12, the 0x00RRGGBB integer stored
in a FLOAT32 field (the convention of PCL's PointXYZRGB, which RViz's RGB8 colour
transformer and ``sensor_msgs_py.point_cloud2`` read); 16 bytes a point, little-endian,
one row, no invalid points (is_dense).
"""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

__all__ = ["CLOUD_DTYPE", "POINT_FIELDS", "points_msg"]

POINT_FIELDS = (PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
                PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
                PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
                PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
CLOUD_DTYPE = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                        "offsets": [0, 4, 8, 12], "itemsize": 16})


def points_msg(header: Header, xyz: np.ndarray, rgb: np.ndarray) -> PointCloud2:
    """(N, 3) float32 metres and (N, 3) uint8 colours -> an unorganised cloud in ``header``'s frame."""
    if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
        raise ValueError(f"points_msg needs (N, 3) xyz and (N, 3) rgb, got {xyz.shape} and {rgb.shape}")
    cloud = np.empty(len(xyz), CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    colour = rgb.astype(np.uint32)
    cloud["rgb"] = (colour[:, 0] << 16) | (colour[:, 1] << 8) | colour[:, 2]
    msg = PointCloud2(header=header, height=1, width=len(cloud), fields=list(POINT_FIELDS), is_bigendian=False,
                      point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * len(cloud), is_dense=True)
    msg.data = cloud.tobytes()
    return msg
