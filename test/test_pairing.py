"""Approximate-time RGB/depth pairing and the latest-pair slot."""
import threading
import time

import pytest

from m4sam_ros.pairing import ApproximateTimePairer, LatestSlot


class FakeClock:
    """Manual monotonic clock so timeouts are tested without sleeping."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(slop=0.015, queue_size=5, depth_timeout=1.0):
    clock = FakeClock()
    return ApproximateTimePairer(slop=slop, queue_size=queue_size, depth_timeout=depth_timeout, clock=clock), clock


def test_exact_stamps_pair_in_either_arrival_order():
    pairer, _ = make()
    assert pairer.add_rgb(1.0, "rgb1") is None
    pair = pairer.add_depth(1.0, "d1")
    assert (pair.rgb, pair.depth, pair.rgb_stamp, pair.depth_stamp) == ("rgb1", "d1", 1.0, 1.0)
    assert pairer.add_depth(2.0, "d2") is None
    pair = pairer.add_rgb(2.0, "rgb2")
    assert (pair.rgb, pair.depth) == ("rgb2", "d2")
    assert pairer.stats.pairs == 2


def test_closest_partner_within_slop_is_chosen():
    pairer, _ = make(slop=0.02)
    pairer.add_depth(0.990, "d_early")
    pairer.add_depth(1.004, "d_close")
    pairer.add_depth(1.018, "d_late")
    pair = pairer.add_rgb(1.000, "rgb")
    assert pair.depth == "d_close"
    assert pair.skew == pytest.approx(0.004)
    # the older unpaired depth is stale now; the newer one stays for the next RGB frame
    assert pairer.stats.unmatched_depth == 1
    assert pairer.add_rgb(1.033, "rgb_next").depth == "d_late"


def test_outside_slop_never_pairs_and_stale_frames_are_counted():
    pairer, _ = make(slop=0.01)
    for i in range(6):
        t = i * 0.033
        assert pairer.add_rgb(t, f"rgb{i}") is None
        assert pairer.add_depth(t + 0.016, f"d{i}") is None  # constant 16 ms offset > slop
    stats = pairer.stats
    assert stats.pairs == 0
    # frames that can no longer match are discarded rather than kept forever
    assert stats.unmatched_rgb + stats.unmatched_depth >= 8


def test_slop_equal_to_offset_pairs():
    pairer, _ = make(slop=0.016)
    pairer.add_rgb(0.0, "rgb")
    assert pairer.add_depth(0.016, "d").depth == "d"


def test_queue_is_bounded_by_queue_size():
    pairer, _ = make(slop=0.001, queue_size=3)
    for i in range(10):
        pairer.add_rgb(float(i), f"rgb{i}")  # no depth at all (within the start-up grace period)
    assert pairer.stats.unmatched_rgb == 7
    # only the three newest RGB frames are still waiting
    assert pairer.add_depth(6.0, "d6") is None
    assert pairer.add_depth(7.0, "d7").rgb == "rgb7"


def test_configure_changes_slop_and_trims_queue():
    pairer, _ = make(slop=0.001, queue_size=5)
    for i in range(5):
        pairer.add_rgb(i * 0.1, f"rgb{i}")
    pairer.configure(queue_size=2, slop=0.05)
    assert pairer.stats.unmatched_rgb == 3
    assert pairer.add_depth(0.43, "d").rgb == "rgb4"
    with pytest.raises(ValueError, match="slop"):
        pairer.configure(slop=-1.0)
    with pytest.raises(ValueError, match="queue_size"):
        pairer.configure(queue_size=0)
    with pytest.raises(ValueError, match="depth_timeout"):
        pairer.configure(depth_timeout=0.0)


def test_rgb_only_after_depth_timeout_and_recovery():
    pairer, clock = make(depth_timeout=0.5)
    pairer.add_rgb(0.0, "rgb0")
    assert pairer.add_depth(0.0, "d0").rgb == "rgb0"
    assert pairer.depth_available
    clock.now = 0.4
    assert pairer.add_rgb(0.4, "rgb1") is None  # depth late but not yet timed out: wait for it
    clock.now = 0.85
    assert pairer.depth_available  # RGB has waited 0.45 s for depth: not yet lost
    clock.now = 0.95
    assert not pairer.depth_available  # 0.55 s of RGB without depth
    pair = pairer.add_rgb(0.95, "rgb2")
    assert (pair.rgb, pair.depth, pair.depth_stamp) == ("rgb2", None, None)
    assert pairer.stats.rgb_only == 1
    # depth returns: RGB-D mode again, the next frames pair
    pairer.add_depth(1.0, "d3")
    assert pairer.depth_available
    assert pairer.add_rgb(1.0, "rgb3").depth == "d3"


def test_no_depth_at_all_falls_back_after_grace_period():
    pairer, clock = make(depth_timeout=1.0)
    assert pairer.add_rgb(0.0, "rgb0") is None
    clock.now = 1.5
    assert pairer.add_rgb(1.5, "rgb1").depth is None
    # the frame that waited during the grace period no longer waits (diagnostics' queued_rgb)
    assert pairer.queued == (0, 0) and pairer.stats.unmatched_rgb == 1


def test_a_camera_starting_late_pairs_its_first_frame():
    """The node idles for a minute before the camera starts: its first RGB frame waits for depth."""
    pairer, clock = make(depth_timeout=0.5)
    clock.now = 60.0
    assert pairer.depth_available
    assert pairer.add_rgb(60.0, "rgb0") is None
    clock.now = 60.01
    assert pairer.add_depth(60.0, "d0").depth == "d0"
    assert pairer.stats.rgb_only == 0


def test_both_streams_pausing_and_resuming_is_not_depth_loss():
    pairer, clock = make(depth_timeout=0.5)
    pairer.add_rgb(0.0, "rgb0")
    pairer.add_depth(0.0, "d0")
    clock.now = 5.0  # both silent for 5 s (a paused bag, a driver restart)
    assert pairer.depth_available
    assert pairer.add_rgb(5.0, "rgb1") is None  # waits for its partner instead of running alone
    clock.now = 5.02
    assert pairer.add_depth(5.0, "d1").rgb == "rgb1"
    assert pairer.stats.rgb_only == 0


def test_stamps_going_backwards_reset_the_queues():
    pairer, _ = make(slop=0.01)
    pairer.add_rgb(10.0, "rgb_old")
    pairer.add_rgb(10.1, "rgb_old2")
    assert pairer.add_rgb(0.0, "rgb_loop") is None   # bag loop: back to t=0
    assert pairer.stats.stamp_resets == 1
    assert pairer.stats.unmatched_rgb == 2
    assert pairer.add_depth(0.0, "d_loop").rgb == "rgb_loop"


def test_latest_slot_drops_and_counts_unconsumed_items():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.get(timeout=0) == 3
    assert slot.get(timeout=0.01) is None
    assert (slot.dropped, slot.put_count) == (2, 3)


def test_latest_slot_close_wakes_waiter():
    slot = LatestSlot()
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.get(timeout=5.0)))
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(timeout=1.0)
    assert not waiter.is_alive() and got == [None]
    with pytest.raises(RuntimeError, match="closed"):
        slot.put(1)


def test_latest_slot_producer_consumer_accounting_is_exact():
    """Every put is either consumed or counted as dropped; the consumer sees increasing items."""
    slot = LatestSlot()
    consumed = []
    done = threading.Event()

    def consumer():
        while True:
            item = slot.get(timeout=0.05)
            if item is None:
                if done.is_set():
                    return
                continue
            consumed.append(item)
            time.sleep(0.0005)  # slower than the producer: drops must happen

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(2000):
        slot.put(i)
    done.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(consumed) + slot.dropped == 2000
    assert slot.dropped > 0
    assert consumed == sorted(consumed) and consumed[-1] == 1999


def test_pairer_is_thread_safe_under_concurrent_producers():
    pairer = ApproximateTimePairer(slop=0.0, queue_size=2000, depth_timeout=60.0)
    n = 3000
    pairs = []
    lock = threading.Lock()

    def feed(add):
        for i in range(n):
            pair = add(float(i), i)
            if pair is not None:
                with lock:
                    pairs.append(pair)

    threads = [threading.Thread(target=feed, args=(pairer.add_rgb,)),
               threading.Thread(target=feed, args=(pairer.add_depth,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = pairer.stats
    assert stats.rgb_received == stats.depth_received == n
    assert all(p.rgb == p.depth for p in pairs)  # only equal stamps may pair with slop 0
    assert stats.pairs == len(pairs)
    # every frame is accounted for exactly once: paired, dropped, or still queued
    queued_rgb, queued_depth = pairer.queued
    assert stats.pairs + stats.unmatched_rgb + queued_rgb == n
    assert stats.pairs + stats.unmatched_depth + queued_depth == n
    assert len(pairs) > 0
