"""The messages the node publishes for one tracked frame, built by the node's own builders.

The offline runner writes these into a bag; they carry the colour frame's header, as the
node's do. Topic names are the node's, relative (a namespace prefixes them).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from std_msgs.msg import Header

from m4sam_ros.ros.conversions import image_msg, objects_msg
from m4sam_ros.ros.markers import build_markers
from m4sam_ros.ros.overlay import render_overlay
from m4sam_ros.tracker import SaliencyResult

__all__ = ["result_messages"]


def result_messages(header: Header, result: SaliencyResult, rgb: np.ndarray, *, probability: bool,
                    overlay: bool, overlay_alpha: float) -> list[tuple[str, Any]]:
    """(topic, message) in the node's publishing order: mask, [probability], objects, markers, [overlay]."""
    messages: list[tuple[str, Any]] = [("saliency/mask", image_msg(header, result.mask * 255, "mono8"))]
    if probability:
        messages.append(("saliency/probability", image_msg(header, result.probability, "32FC1")))
    messages.append(("saliency/objects", objects_msg(header, result.objects)))
    messages.append(("saliency/markers", build_markers(header, result.objects)))
    if overlay:
        bgr = render_overlay(rgb, result.mask, result.objects, overlay_alpha)
        messages.append(("saliency/overlay", image_msg(header, bgr, "bgr8")))
    return messages
