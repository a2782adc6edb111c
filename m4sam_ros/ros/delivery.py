"""Measure how many RGB-D frame pairs reach a subscriber in another process, per QoS.

A camera process publishes colour (rgb8) and aligned depth (16UC1) with one stamp per pair
at a fixed rate, with the reliability a driver uses (realsense-ros 4.x and most drivers
publish RELIABLE by default; ``sensor_data`` drivers BEST_EFFORT). This process subscribes
as the saliency node would with each ``qos.reliability`` setting (``auto`` matches the
publisher, ``ros/qos.py``) and counts the pairs that arrive whole, and their latency. What
the node can pair is what arrives: connecting is not delivering.

    m4sam delivery --sizes 640x480,1280x720 --rate 30 --seconds 5

Writes a JSON report; the machine's UDP receive-buffer limits (``net.core.rmem_max``,
``rmem_default``) are in it, because best-effort delivery of large images depends on them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RGB_TOPIC, DEPTH_TOPIC = "delivery/color/image_raw", "delivery/depth/image_raw"
PUBLISHERS = ("reliable", "best_effort")
SUBSCRIBERS = ("auto", "reliable", "best_effort")
MATCH_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="640x480,1280x720", help="comma-separated WxH frame sizes")
    parser.add_argument("--rate", type=float, default=30.0, help="pairs per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per combination")
    parser.add_argument("--publishers", default=",".join(PUBLISHERS), help=f"publisher reliabilities: {PUBLISHERS}")
    parser.add_argument("--subscribers", default=",".join(SUBSCRIBERS), help=f"qos.reliability settings: {SUBSCRIBERS}")
    parser.add_argument("--output", type=Path, default=Path("runs/delivery/delivery.json"))
    parser.add_argument("--role", choices=("measure", "camera"), default="measure", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reliability", default="reliable", help=argparse.SUPPRESS)


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SystemExit(f"m4sam delivery: {what} must be among {allowed}, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"m4sam delivery: a size is WxH, e.g. 640x480; got {text!r}") from None
    return width, height


def _publisher_qos(reliability: str):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if reliability == "best_effort":
        return qos_profile_sensor_data  # what sensor_data drivers publish with: BEST_EFFORT, depth 5
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # rclpy's and realsense-ros's default


def _camera(size: str, reliability: str, rate: float, seconds: float) -> int:
    """The camera process: wait for a subscriber on both topics, publish, linger for repairs,
    print what was sent as JSON."""
    import rclpy
    from sensor_msgs.msg import Image

    width, height = _size(size)
    rclpy.init()
    node = rclpy.create_node("delivery_camera")
    qos = _publisher_qos(reliability)
    rgb_pub, depth_pub = node.create_publisher(Image, RGB_TOPIC, qos), node.create_publisher(Image, DEPTH_TOPIC, qos)
    deadline = time.monotonic() + MATCH_TIMEOUT_S
    while time.monotonic() < deadline and (rgb_pub.get_subscription_count() < 1 or
                                           depth_pub.get_subscription_count() < 1):
        time.sleep(0.05)
    matched = rgb_pub.get_subscription_count() >= 1 and depth_pub.get_subscription_count() >= 1
    rng = np.random.default_rng(0)
    rgb = Image(height=height, width=width, encoding="rgb8", step=3 * width,
                data=rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes())
    depth = Image(height=height, width=width, encoding="16UC1", step=2 * width,
                  data=rng.integers(300, 3000, (height, width), dtype=np.uint16).tobytes())
    sent, start = 0, time.monotonic()
    if matched:
        time.sleep(0.5)  # discovery settles on both sides
        start = time.monotonic()
        for index in range(int(round(rate * seconds))):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            stamp = node.get_clock().now().to_msg()
            rgb.header.stamp = depth.header.stamp = stamp
            rgb.header.frame_id = depth.header.frame_id = str(index)
            rgb_pub.publish(rgb)
            depth_pub.publish(depth)
            sent += 1
        time.sleep(1.0)  # a reliable writer keeps repairing while it lives
    print(json.dumps({"matched": matched, "sent": sent, "publish_s": time.monotonic() - start}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def measure(size: str, publisher: str, subscriber: str, rate: float, seconds: float) -> dict:
    """One combination: start a camera process, subscribe as the node would, count whole pairs."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from m4sam_ros.ros.qos import camera_qos

    camera = subprocess.Popen(
        [sys.executable, "-m", "m4sam_ros.cli", "delivery", "--role", "camera", "--size", size,
         "--reliability", publisher, "--rate", str(rate), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("delivery_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    arrivals: dict[str, dict[str, float]] = {RGB_TOPIC: {}, DEPTH_TOPIC: {}}
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + MATCH_TIMEOUT_S
        publishers = []
        while time.monotonic() < deadline and not publishers and camera.poll() is None:
            publishers = node.get_publishers_info_by_topic(f"/{RGB_TOPIC}")
            time.sleep(0.05)
        profile, why, _ = camera_qos(subscriber, publishers)

        def on_image(topic: str):
            def callback(message: Image) -> None:
                now = node.get_clock().now().nanoseconds
                arrivals[topic][message.header.frame_id] = now
                if topic == RGB_TOPIC:
                    stamp = message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
                    latencies.append((now - stamp) / 1e6)
            return callback

        for topic in arrivals:
            node.create_subscription(Image, topic, on_image(topic), profile)
        while camera.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):  # what is still queued locally
            executor.spin_once(timeout_sec=0.01)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    out, err = camera.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if camera.returncode != 0 or not lines:
        raise RuntimeError(f"the camera process failed (exit {camera.returncode}): {err.strip()[-2000:]}")
    sent = json.loads(lines[-1])
    pairs = set(arrivals[RGB_TOPIC]) & set(arrivals[DEPTH_TOPIC])
    count = max(sent["sent"], 1)
    return {"size": size, "publisher": publisher, "subscriber": subscriber, "subscription": profile.reliability.name,
            "why": why,
            "connected": sent["matched"], "sent": sent["sent"], "colour": len(arrivals[RGB_TOPIC]),
            "depth": len(arrivals[DEPTH_TOPIC]), "pairs": len(pairs),
            "pairs_delivered": len(pairs) / count if sent["matched"] else 0.0,
            "latency_ms_median": float(np.median(latencies)) if latencies else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None}


def _sysctl(name: str) -> int | None:
    try:
        return int(Path("/proc/sys/net/core", name).read_text())
    except (OSError, ValueError):
        return None


def print_table(report: dict) -> None:
    print(f"### RGB-D pairs delivered between two processes, {report['rate']:g} Hz, {report['seconds']:g} s each "
          f"(net.core.rmem_max {report['rmem_max']}, rmem_default {report['rmem_default']})\n")
    print("| size | publisher | qos.reliability | subscribed | pairs delivered | colour / depth | latency ms (p50 / p95) |")
    print("|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        latency = ("-" if row["latency_ms_median"] is None
                   else f"{row['latency_ms_median']:.1f} / {row['latency_ms_p95']:.1f}")
        delivered = (f"{row['pairs']}/{row['sent']} ({100 * row['pairs_delivered']:.0f} %)" if row["connected"]
                     else "no connection (incompatible QoS)")
        print(f"| {row['size']} | {row['publisher']} | {row['subscriber']} | {row['subscription']} | {delivered} | "
              f"{row['colour']} / {row['depth']} | {latency} |")


def run(args: argparse.Namespace) -> int:
    if args.role == "camera":
        return _camera(args.size, args.reliability, args.rate, args.seconds)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        _size(size)
    publishers = _choices(args.publishers, PUBLISHERS, "--publishers")
    subscribers = _choices(args.subscribers, SUBSCRIBERS, "--subscribers")
    if args.rate <= 0 or args.seconds <= 0:
        raise SystemExit("m4sam delivery: --rate and --seconds must be > 0")
    rows = []
    combinations = [(s, p, q) for s in sizes for p in publishers for q in subscribers]
    for number, (size, publisher, subscriber) in enumerate(combinations, 1):
        print(f"[{number}/{len(combinations)}] {size}, {publisher} publisher, qos.reliability {subscriber}",
              file=sys.stderr, flush=True)
        rows.append(measure(size, publisher, subscriber, args.rate, args.seconds))
    report = {"rate": args.rate, "seconds": args.seconds, "rmem_max": _sysctl("rmem_max"),
              "rmem_default": _sysctl("rmem_default"), "rmw": os.environ.get("RMW_IMPLEMENTATION", "default"),
              "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nreport: {args.output}")
    return 0
