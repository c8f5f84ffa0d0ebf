"""Tests of cmdr_ros.ros.node.sync: the approximate-time policy against hand-worked stamps and against a transcription
of the ros2/message_filters reference, the message_filters wiring (with a stand-in module), and one real-DDS run."""
from __future__ import annotations

import itertools
import os
import random
import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest

from cmdr_ros import CmdrError
from cmdr_ros.ros.node.sync import ApproximateTimePolicy, InputLateness, make_synchronizer

MS = 1_000_000  # nanoseconds per millisecond


class ReferenceApproxSync:
    """Oracle: ros2/message_filters ``ApproximateTimeSynchronizer.add`` transcribed line by line, with rclpy
    Time/Duration replaced by integer nanoseconds (``Duration(seconds=slop)`` is ``int(slop * 1e9)``)."""

    def __init__(self, n_inputs, queue_size, slop, emit):
        self.queues = [{} for _ in range(n_inputs)]
        self.queue_size = queue_size
        self.slop = int(slop * 1_000_000_000)
        self.emit = emit
        self.lock = threading.Lock()

    def add(self, msg, my_queue, my_queue_index, stamp):
        self.lock.acquire()
        my_queue[stamp] = msg
        while len(my_queue) > self.queue_size:
            del my_queue[min(my_queue)]
        search_queues = self.queues[:my_queue_index] + self.queues[my_queue_index + 1:]
        stamps = []
        for queue in search_queues:
            topic_stamps = []
            for s in queue:
                stamp_delta = abs(s - stamp)
                if stamp_delta > self.slop:
                    continue  # far over the slop
                topic_stamps.append((s, stamp_delta))
            if not topic_stamps:
                self.lock.release()
                return
            topic_stamps = sorted(topic_stamps, key=lambda x: x[1])
            stamps.append(topic_stamps)
        for vv in itertools.product(*[list(zip(*s))[0] for s in stamps]):
            vv = list(vv)
            vv.insert(my_queue_index, stamp)
            qt = list(zip(self.queues, vv))
            if ((max(vv) - min(vv)) < self.slop) and (len([1 for q, t in qt if t not in q]) == 0):
                msgs = [q[t] for q, t in qt]
                self.emit(*msgs)
                for q, t in qt:
                    del q[t]
                break  # fast finish after the synchronization
        self.lock.release()


def _policy(n_inputs=2, queue_size=5, slop=0.05, **kwargs):
    """A policy whose emitted sets are collected in ``policy.sets``."""
    sets: list[tuple] = []
    policy = ApproximateTimePolicy(n_inputs, queue_size, slop, lambda *m: sets.append(m), **kwargs)
    policy.sets = sets
    return policy


def _feed(policy, events):
    """``events``: (input index, stamp in ms); the message is the tuple itself so sets read back as stamps."""
    for index, ms in events:
        policy.add(index, (index, ms), stamp_ns=ms * MS)


def _stamped(sec, nanosec):
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)))


def _named(name, ms):
    """A header-stamped stand-in message called ``name@ms``."""
    msg = _stamped(ms // 1000, (ms % 1000) * MS)
    msg.name = f"{name}@{ms}"
    return msg


def _conserved(policy):
    """received[i] == matched + dropped[i] + rejected[i] + pending[i] for every input."""
    st, pending = policy.stats.snapshot(), policy.pending()
    return all(st.received[i] == st.matched + st.dropped[i] + st.rejected[i] + pending[i]
               for i in range(policy.n_inputs))


def test_exact_matches_are_emitted_in_input_order():
    p = _policy()
    _feed(p, [(0, 100), (1, 100), (1, 200), (0, 200)])
    assert p.sets == [((0, 100), (1, 100)), ((0, 200), (1, 200))]
    st = p.stats.snapshot()
    assert (st.received, st.matched, st.dropped, p.pending()) == ([2, 2], 2, [0, 0], [0, 0])


def test_spread_must_be_strictly_below_slop():
    p = _policy(slop=0.05)
    _feed(p, [(0, 0), (1, 50)])  # spread == slop: a candidate (<= slop) but not a set (< slop), as in the reference
    assert p.sets == [] and p.pending() == [1, 1]
    p.add(1, "late", stamp_ns=50 * MS - 1)
    assert p.sets == [((0, 0), "late")] and p.pending() == [0, 1]


def test_header_stamp_is_read_when_no_explicit_stamp():
    p = _policy()
    a, b = _stamped(3, 10 * MS), _stamped(3, 20 * MS)
    p.add(0, a)
    p.add(1, b)
    assert p.sets == [(a, b)]
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    img, cloud = sensor_msgs.Image(), sensor_msgs.PointCloud2()
    img.header.stamp.sec = cloud.header.stamp.sec = 7
    cloud.header.stamp.nanosec = 40 * MS
    p.add(0, img)
    p.add(1, cloud)
    assert p.sets[-1] == (img, cloud)


def test_closest_candidate_of_each_input_wins():
    p = _policy(slop=0.05)
    _feed(p, [(0, 100), (0, 130), (1, 125)])  # 130 is 5 ms away, 100 is 25 ms away
    assert p.sets == [((0, 130), (1, 125))] and p.pending() == [1, 0]


def test_three_inputs_follow_reference_product_order():
    # New image at 100; points candidates sorted by distance [95, 110]; camera_info [120]. The product tries
    # (95, 120) first: spread 25 < 30 ms, so it wins although (110, 120) would be tighter (spread 20).
    p = _policy(n_inputs=3, slop=0.03)
    _feed(p, [(1, 95), (1, 110), (2, 120), (0, 100)])
    assert p.sets == [((0, 100), (1, 95), (2, 120))] and p.pending() == [0, 1, 0]
    # First combination too wide: candidates [80 (20 ms), 125 (25 ms)] x [130]: (80, 130) spans 50 >= 40 ms.
    q = _policy(n_inputs=3, slop=0.04)
    _feed(q, [(1, 80), (1, 125), (2, 130), (0, 100)])
    assert q.sets == [((0, 100), (1, 125), (2, 130))]
    # An input without any candidate blocks the set.
    r = _policy(n_inputs=3, slop=0.01)
    _feed(r, [(0, 100), (1, 100), (2, 200)])
    assert r.sets == [] and r.pending() == [1, 1, 1]


def test_queue_overflow_drops_oldest_stamp_and_counts_it():
    p = _policy(queue_size=2)
    _feed(p, [(0, 100), (0, 300), (0, 200)])  # arrival order differs from stamp order: 100 is the oldest stamp
    assert p.pending() == [2, 0] and p.stats.dropped == [1, 0]
    _feed(p, [(1, 100)])  # its partner is gone
    assert p.sets == []
    _feed(p, [(1, 200), (1, 300)])
    assert p.sets == [((0, 200), (1, 200)), ((0, 300), (1, 300))]
    st = p.stats.snapshot()
    assert (st.received, st.matched, st.dropped, p.pending()) == ([3, 3], 2, [1, 0], [0, 1])
    assert _conserved(p)


def test_same_stamp_replaces_queued_message_and_counts_a_drop():
    p = _policy()
    p.add(0, "first", stamp_ns=5 * MS)
    p.add(0, "second", stamp_ns=5 * MS)
    p.add(1, "points", stamp_ns=5 * MS)
    assert p.sets == [("second", "points")] and p.stats.dropped == [1, 0] and _conserved(p)


def test_unmatched_image_then_matched_sets():
    p = _policy(queue_size=2, slop=0.02)
    _feed(p, [(0, 0), (0, 100), (1, 100), (0, 200), (1, 200)])  # the image at 0 never gets points
    assert p.sets == [((0, 100), (1, 100)), ((0, 200), (1, 200))]
    assert p.pending() == [1, 0] and p.stats.dropped == [0, 0]
    _feed(p, [(0, 300), (0, 400)])  # queue {0, 300, 400} overflows: the stale image at 0 is evicted
    assert p.stats.dropped == [1, 0] and p.pending() == [2, 0]
    _feed(p, [(1, 400)])
    assert p.sets[-1] == ((0, 400), (1, 400)) and p.stats.matched == 3 and _conserved(p)


def test_out_of_order_arrival():
    p = _policy(queue_size=3)
    _feed(p, [(1, 200), (0, 300), (1, 100), (0, 100), (0, 200)])
    assert p.sets == [((0, 100), (1, 100)), ((0, 200), (1, 200))] and p.pending() == [1, 0]
    # A late message older than a full queue evicts itself, so it cannot match (the reference's
    # "still queued" test), even though its partner is waiting.
    q = _policy(queue_size=1)
    _feed(q, [(1, 100), (0, 200), (0, 100)])
    assert q.sets == [] and q.pending() == [1, 1] and q.stats.dropped == [1, 0] and _conserved(q)


def test_single_input_emits_every_message():
    p = _policy(n_inputs=1, queue_size=1)
    _feed(p, [(0, 300), (0, 100), (0, 100)])
    assert p.sets == [((0, 300),), ((0, 100),), ((0, 100),)] and p.pending() == [0]


def test_headerless_messages():
    ticks = iter([1000 * MS, 1010 * MS, 2000 * MS])
    p = _policy(allow_headerless=True, clock_ns=lambda: next(ticks))
    p.add(0, "img")  # arrival 1000 ms
    p.add(1, "pts")  # arrival 1010 ms
    p.add(1, "pts2")  # arrival 2000 ms: nothing near it
    assert p.sets == [("img", "pts")] and p.pending() == [0, 1]
    q = _policy()
    q.add(0, "img")
    q.add(1, "pts", stamp_ns=0)
    st = q.stats.snapshot()
    assert q.sets == [] and st.received == [1, 1] and st.rejected == [1, 0] and q.pending() == [0, 1]
    assert _conserved(q)


def test_stats_snapshot_is_independent():
    p = _policy()
    _feed(p, [(0, 1), (1, 1), (0, 500)])
    snap = p.stats.snapshot()
    _feed(p, [(1, 500)])
    assert (snap.received, snap.matched) == ([2, 1], 1)
    assert p.stats.matched == 2 and p.stats.received == [2, 2]


def test_invalid_parameters_raise_cmdr_error():
    for args in [(0, 5, 0.1), (2, 0, 0.1), (2, 5, 0.0), (2, 5, float("nan"))]:
        with pytest.raises(CmdrError):
            ApproximateTimePolicy(*args, callback=print)
    with pytest.raises(IndexError):
        _policy().add(2, "x", stamp_ns=0)


def test_thread_safety_many_writers():
    n_frames = 300
    p = _policy(n_inputs=3, queue_size=n_frames, slop=0.1)
    writers = [(0, range(0, n_frames, 2)), (0, range(1, n_frames, 2)), (1, range(n_frames)), (2, range(n_frames))]

    def write(index, frames):
        for f in frames:
            p.add(index, (index, f), stamp_ns=f * 1000 * MS)

    threads = [threading.Thread(target=write, args=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s[0][1] for s in p.sets) == list(range(n_frames))
    assert all(s == ((0, s[0][1]), (1, s[0][1]), (2, s[0][1])) for s in p.sets)
    st = p.stats.snapshot()
    assert (st.received, st.matched, st.dropped, p.pending()) == ([n_frames] * 3, n_frames, [0] * 3, [0] * 3)


def _random_stream(rng, n_inputs, n_frames):
    """Frames every 60 ms, per-input jitter in 5 ms steps (so several candidates and distance ties are common),
    20 % drops, occasional duplicate stamps, and arrival delays up to 200 ms that interleave and reorder inputs."""
    events = []
    for frame in range(n_frames):
        for index in range(n_inputs):
            if rng.random() < 0.2:
                continue
            stamp = frame * 60 + 5 * rng.randint(-5, 5)
            if rng.random() < 0.03:
                stamp = frame * 60  # collides with a previous exact stamp now and then
            events.append((stamp + rng.randint(0, 200), index, stamp))
    events.sort(key=lambda e: e[0])
    return [(index, stamp) for _, index, stamp in events]


@pytest.mark.parametrize("n_inputs,queue_size,slop", [(2, 3, 0.03), (2, 1, 0.05), (3, 4, 0.04), (3, 2, 0.06)])
def test_matches_reference_on_random_streams(n_inputs, queue_size, slop):
    rng = random.Random(1000 * n_inputs + queue_size)
    for _ in range(5):
        stream = _random_stream(rng, n_inputs, 150)
        ref_sets, ours = [], _policy(n_inputs, queue_size, slop)
        ref = ReferenceApproxSync(n_inputs, queue_size, slop, lambda *m: ref_sets.append(m))
        for seq, (index, ms) in enumerate(stream):
            msg = (seq, index, ms)
            ref.add(msg, ref.queues[index], index, ms * MS)
            ours.add(index, msg, stamp_ns=ms * MS)
        assert ours.sets == ref_sets
        assert len(ref_sets) > 20  # the streams really exercise matching
        assert ours.pending() == [len(q) for q in ref.queues] and _conserved(ours)


class _FakeNode:
    """Records create/destroy_subscription so callbacks can be driven by hand."""

    def __init__(self):
        self.callbacks, self.destroyed, self.event_callbacks = {}, [], {}

    def create_subscription(self, msg_type, topic, callback, qos_profile, callback_group=None, event_callbacks=None):
        self.callbacks[topic] = callback
        self.event_callbacks[topic] = event_callbacks
        return topic

    def destroy_subscription(self, sub):
        self.destroyed.append(sub)


def _fake_message_filters():
    """A stand-in ``message_filters`` module (same Subscriber/registerCallback protocol) around the oracle."""
    module = types.ModuleType("message_filters")

    class SimpleFilter:
        def __init__(self):
            self.callbacks = {}

        def registerCallback(self, cb, *args):
            self.callbacks[len(self.callbacks)] = (cb, args)

        def signalMessage(self, *msg):
            for cb, args in list(self.callbacks.values()):
                cb(*(msg + args))

    class Subscriber(SimpleFilter):
        def __init__(self, node, msg_type, topic, qos_profile=10, **kwargs):
            super().__init__()
            self.sub = node.create_subscription(msg_type, topic, self.signalMessage, qos_profile, **kwargs)

    class ApproximateTimeSynchronizer(SimpleFilter):
        def __init__(self, fs, queue_size, slop, allow_headerless=False):
            super().__init__()
            self.ref = ReferenceApproxSync(len(fs), queue_size, slop, self.signalMessage)
            for i, f in enumerate(fs):
                f.registerCallback(self.add, i)

        def add(self, msg, i):
            stamp = msg.header.stamp
            self.ref.add(msg, self.ref.queues[i], i, stamp.sec * 1_000_000_000 + stamp.nanosec)

    module.Subscriber, module.ApproximateTimeSynchronizer = Subscriber, ApproximateTimeSynchronizer
    return module


@pytest.mark.parametrize("prefer", [True, False])
def test_make_synchronizer_backends(monkeypatch, prefer):
    monkeypatch.setitem(sys.modules, "message_filters", _fake_message_filters())
    node, sets = _FakeNode(), []
    events = object()
    sync = make_synchronizer(node, [(object, "image"), (object, "points")], 10, 2, 0.02,
                             lambda *m: sets.append(m), prefer_message_filters=prefer, event_callbacks=events)
    assert sync.backend == ("message_filters" if prefer else "policy")
    assert node.event_callbacks == {"image": events, "points": events}  # e.g. incompatible-QoS reporting
    msgs = [("image", 0), ("image", 100), ("points", 100), ("image", 200), ("image", 300)]
    for topic, ms in msgs:
        node.callbacks[topic](_named(topic, ms))
    assert [(i.name, p.name) for i, p in sets] == [("image@100", "points@100")]
    st = sync.stats.snapshot()
    assert (st.received, st.matched) == ([4, 1], 1)
    # policy: exactly one eviction (image 0); message_filters: received minus matched (images 0, 200, 300 unused)
    assert st.dropped == ([3, 0] if prefer else [1, 0])
    sync.destroy()
    sync.destroy()
    assert node.destroyed == ["image", "points"]


def test_rclpy_image_and_cloud_pairs():
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2, PointField

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    context = rclpy.Context()
    rclpy.init(context=context)
    nodes, executor, spinner = [], None, None
    try:
        talker = rclpy.create_node("sync_test_talker", context=context)
        listener = rclpy.create_node("sync_test_listener", context=context)
        nodes = [talker, listener]
        got, done = [], threading.Event()

        def on_pair(image, cloud):
            got.append((image, cloud))
            if len(got) == 5:
                done.set()

        sync = make_synchronizer(listener, [(Image, "cam/image"), (PointCloud2, "cam/points")], qos, 5, 0.01, on_pair)
        image_pub = talker.create_publisher(Image, "cam/image", qos)
        cloud_pub = talker.create_publisher(PointCloud2, "cam/points", qos)
        executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        deadline = time.monotonic() + 5.0
        while (image_pub.get_subscription_count() < 1 or cloud_pub.get_subscription_count() < 1) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        for k in range(5):
            image = Image(height=1, width=2, encoding="mono8", step=2, data=[k, k])
            cloud = PointCloud2(height=1, width=1, point_step=4, row_step=4, data=[0, 0, 0, k],
                                fields=[PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1)])
            image.header.stamp.sec = cloud.header.stamp.sec = 10 + k
            image.header.frame_id = cloud.header.frame_id = f"frame{k}"
            image_pub.publish(image)
            cloud_pub.publish(cloud)
            time.sleep(0.02)
        assert done.wait(5.0), f"only {len(got)} of 5 pairs arrived"
        assert [(i.header.frame_id, c.header.frame_id) for i, c in got] == [(f"frame{k}",) * 2 for k in range(5)]
        assert [list(i.data) for i, _ in got] == [[k, k] for k in range(5)]
        assert [c.data[3] for _, c in got] == list(range(5))
        st = sync.stats.snapshot()
        assert (st.received, st.matched, st.dropped) == ([5, 5], 5, [0, 0])
        sync.destroy()
    finally:
        if executor is not None:
            executor.shutdown()
        if spinner is not None:
            spinner.join(timeout=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


def test_dropped_inputs_are_handed_back_never_lost():
    """on_drop receives every message that leaves unmatched: evicted, duplicate stamp, expired, flushed, and after
    close() every later one at once (the node answers each of them)."""
    now = [0.0]
    dropped: list[tuple[int, str, str]] = []
    sets: list[tuple] = []
    policy = ApproximateTimePolicy(2, 2, 0.05, lambda *m: sets.append(m), monotonic=lambda: now[0],
                                   on_drop=lambda i, m, why: dropped.append((i, m.name, why)))

    def msg(name: str, t: float):
        return SimpleNamespace(name=name, header=SimpleNamespace(stamp=SimpleNamespace(sec=int(t), nanosec=0)))

    policy.add(0, msg("a1", 1))
    policy.add(0, msg("a1bis", 1))  # same stamp: the first is replaced
    policy.add(0, msg("a2", 2))
    policy.add(0, msg("a3", 3))  # queue of 2: the oldest is evicted
    now[0] = 5.0
    policy.add(1, msg("b9", 9))
    assert policy.expire(1.0) == 2  # a2, a3 waited 5 s
    assert policy.close() == 1  # b9 still waiting
    policy.add(0, msg("late", 10))
    assert sets == [] and dropped == [(0, "a1", "duplicate"), (0, "a1bis", "evicted"), (0, "a2", "timeout"),
                                      (0, "a3", "timeout"), (1, "b9", "shutdown"), (0, "late", "shutdown")]
    assert policy.pending() == [0, 0]


def test_input_lateness_percentiles_per_input():
    late = InputLateness(2, keep=100)
    assert late.percentiles() == [(0.0, 0.0, 0), (0.0, 0.0, 0)]
    late.note_set([10.0, None])  # one input alone: no set, nothing to measure
    assert late.percentiles()[0][2] == 0
    for i in range(20):  # the second input arrives i * 0.1 s after the first
        late.note_set([100.0 + i, 100.0 + i + 0.1 * i])
    (f50, f95, fn), (p50, p95, pn) = late.percentiles()
    assert (f50, f95, fn) == (0.0, 0.0, 20) and pn == 20
    assert p50 == pytest.approx(0.95) and p95 == pytest.approx(1.805)  # numpy's linear percentiles of 0.0..1.9
    late = InputLateness(2, keep=3)  # the last ``keep`` sets
    for arrivals in ([0.0, 9.0], [5.3, 5.0], [7.0, 7.2], [8.0, 8.4]):
        late.note_set(arrivals)
    (f50, _, fn), (p50, _, pn) = late.percentiles()
    assert (fn, pn) == (3, 3) and f50 == 0.0 and p50 == pytest.approx(0.2)  # [0.3, 0, 0] and [0, 0.2, 0.4]


def test_policy_measures_late_inputs_matched_and_missed():
    """Arrival times (the policy's monotonic clock), not stamps: a matched set measures the later input against the
    first; an input arriving after its partner timed out is measured against the partner's arrival."""
    clock = [0.0]
    sets = []
    policy = ApproximateTimePolicy(2, 10, 0.05, lambda *m: sets.append(m), monotonic=lambda: clock[0],
                                   on_drop=lambda *a: None)
    policy.add(0, "image 1", stamp_ns=1000 * MS)
    clock[0] = 0.3
    policy.add(1, "points 1", stamp_ns=1000 * MS)  # matched, 0.3 s late
    clock[0] = 1.0
    policy.add(0, "image 2", stamp_ns=2000 * MS)
    clock[0] = 2.5
    assert policy.expire(1.0) == 1  # image 2 gave up waiting
    clock[0] = 2.7
    policy.add(1, "points 2", stamp_ns=2000 * MS)  # 1.7 s after image 2: too late to match, still measured
    clock[0] = 2.8
    policy.add(1, "points 3", stamp_ns=9000 * MS)  # no partner anywhere: nothing to measure
    assert sets == [("image 1", "points 1")]
    (_, _, n_image), (p50, p95, n_points) = policy.lateness.percentiles()
    assert (n_image, n_points) == (2, 2)
    assert p50 == pytest.approx(1.0) and p95 == pytest.approx(1.63)
