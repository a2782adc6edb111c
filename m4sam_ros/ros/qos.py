"""Which QoS a camera subscription gets: matched to the publishers it finds, or as configured.

A BEST_EFFORT subscription connects to every publisher, but between processes it loses large
images (fragmented samples are never repaired); a RELIABLE one repairs them, but cannot connect
to a BEST_EFFORT publisher. ``auto`` matches what the topic's publishers offer (as image_proc
does): RELIABLE when every publisher is, BEST_EFFORT when any is not, and BEST_EFFORT while
no publisher exists yet (the node checks again when one appears).
"""
from __future__ import annotations

from collections.abc import Sequence

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.topic_endpoint_info import TopicEndpointInfo

__all__ = ["RELIABILITIES", "camera_qos"]

RELIABILITIES = ("auto", "reliable", "best_effort")
QUEUE_DEPTH = 5

RELIABLE = QoSProfile(depth=QUEUE_DEPTH, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = qos_profile_sensor_data


def camera_qos(reliability: str, publishers: Sequence[TopicEndpointInfo]) -> tuple[QoSProfile, str, bool]:
    """(profile, why, settled) for a camera topic whose publishers are ``publishers``; ``settled``
    is False while ``auto`` had no publisher to match and should look again."""
    if reliability not in RELIABILITIES:
        raise ValueError(f"qos.reliability must be one of {RELIABILITIES}, got {reliability!r}")
    if reliability == "reliable":
        return RELIABLE, "RELIABLE (qos.reliability)", True
    if reliability == "best_effort":
        return BEST_EFFORT, "BEST_EFFORT (qos.reliability)", True
    if not publishers:
        return BEST_EFFORT, "BEST_EFFORT until a publisher appears (qos.reliability auto)", False
    best_effort = sum(p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers)
    if best_effort:
        return BEST_EFFORT, f"BEST_EFFORT, matching {best_effort} BEST_EFFORT publisher(s) (qos.reliability auto)", True
    return RELIABLE, f"RELIABLE, matching {len(publishers)} RELIABLE publisher(s) (qos.reliability auto)", True
