"""Salient objects -> RViz markers: a translucent box per object and a label with its id and score.

Every array starts with DELETEALL, so markers of objects that disappeared vanish at once
instead of lingering until a lifetime runs out.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence

from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from m4sam_ros.postprocess import SalientObject

__all__ = ["BOX_NAMESPACE", "LABEL_NAMESPACE", "build_markers", "object_colour"]

BOX_NAMESPACE = "saliency_boxes"
LABEL_NAMESPACE = "saliency_labels"
MIN_SIZE_M = 0.01      # RViz hides zero-size cubes; a flat object still deserves a box
LABEL_HEIGHT_M = 0.05


def object_colour(object_id: int, alpha: float = 1.0) -> ColorRGBA:
    """A stable, well separated colour per id (golden-angle hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((object_id * 0.618033988749895) % 1.0, 0.8, 1.0)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def build_markers(header: Header, objects: Sequence[SalientObject]) -> MarkerArray:
    """Markers in the camera optical frame of ``header``; objects without 3D get none."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for obj in objects:
        if obj.centroid is None or obj.extent is None:
            continue
        cx, cy, cz = (float(v) for v in obj.centroid)
        sx, sy, sz = (max(float(v), MIN_SIZE_M) for v in obj.extent)
        markers.append(Marker(
            header=header, ns=BOX_NAMESPACE, id=int(obj.id), type=Marker.CUBE, action=Marker.ADD,
            pose=Pose(position=Point(x=cx, y=cy, z=cz), orientation=Quaternion(w=1.0)),
            scale=Vector3(x=sx, y=sy, z=sz), color=object_colour(obj.id, alpha=0.4)))
        # optical frame: y points down, so "above the box" is -y
        markers.append(Marker(
            header=header, ns=LABEL_NAMESPACE, id=int(obj.id), type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
            pose=Pose(position=Point(x=cx, y=cy - sy / 2 - LABEL_HEIGHT_M, z=cz), orientation=Quaternion(w=1.0)),
            scale=Vector3(z=LABEL_HEIGHT_M), color=object_colour(obj.id), text=f"#{obj.id} {obj.score:.2f}"))
    return MarkerArray(markers=markers)
