"""cmdr_ros/ros/compat.py: Humble's emulated pre-/post-set parameter callbacks behave as rclpy's own (Jazzy, Kilted).

Each case runs twice on the installed rclpy: with the native callbacks and with the emulation Humble gets
(``emulate=True``), and must give the same results; test_ros_api.py checks that the Node members the emulation wraps
exist on Humble."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from cmdr_ros.ros import compat  # noqa: E402
from cmdr_ros.ros.node.parameters import coerce_parameters  # noqa: E402
from domains import new_domain  # noqa: E402


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=new_domain())
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(params=[False, True], ids=["native", "emulated"])
def node(request, context):
    """A node with a float ``threshold``: pre-set coercion, an on-set check refusing negatives, a post-set log."""
    n = rclpy.create_node(f"compat_{'emulated' if request.param else 'native'}", context=context)
    n.declare_parameter("threshold", 1.5)
    n.declare_parameter("name", "a")
    n.seen, n.applied = [], []

    def on_set(params):
        n.seen.append([(p.name, p.value) for p in params])
        bad = [p.name for p in params if p.name == "threshold" and p.value < 0]
        return SetParametersResult(successful=not bad, reason=f"negative: {bad}" if bad else "")

    compat.add_pre_set_parameters_callback(n, coerce_parameters, emulate=request.param)
    n.add_on_set_parameters_callback(on_set)
    compat.add_post_set_parameters_callback(n, lambda params: n.applied.append([(p.name, p.value) for p in params]),
                                            emulate=request.param)
    yield n
    n.destroy_node()


def test_a_whole_number_for_a_float_parameter_is_coerced_before_the_type_check(node):
    [result] = node.set_parameters([Parameter("threshold", value=3)])
    assert result.successful, result.reason
    assert node.get_parameter("threshold").value == 3.0
    assert node.seen == [[("threshold", 3.0)]] and node.applied == [[("threshold", 3.0)]]


def test_post_set_runs_only_after_a_successful_set(node):
    result = node.set_parameters_atomically([Parameter("threshold", value=-1.0), Parameter("name", value="b")])
    assert not result.successful and "negative" in result.reason
    assert node.applied == [] and node.get_parameter("name").value == "a"
    result = node.set_parameters_atomically([Parameter("threshold", value=2), Parameter("name", value="b")])
    assert result.successful
    assert node.applied == [[("threshold", 2.0), ("name", "b")]]


def test_set_parameters_runs_the_callbacks_once_per_entry(node):
    results = node.set_parameters([Parameter("threshold", value=-2.0), Parameter("name", value="c")])
    assert [r.successful for r in results] == [False, True]
    assert node.seen == [[("threshold", -2.0)], [("name", "c")]]
    assert node.applied == [[("name", "c")]]


def test_a_wrong_type_is_still_refused(node):
    [result] = node.set_parameters([Parameter("threshold", value="high")])
    assert not result.successful and node.applied == [] and node.get_parameter("threshold").value == 1.5


def test_an_empty_list_after_the_pre_set_step_is_refused(context):
    for emulate in (False, True):
        n = rclpy.create_node("compat_empty", context=context)
        n.declare_parameter("threshold", 1.5)
        compat.add_pre_set_parameters_callback(n, lambda params: [], emulate=emulate)
        result = n.set_parameters_atomically([Parameter("threshold", value=2.0)])
        assert not result.successful and result.reason == compat.EMPTY_AFTER_PRE_SET
        assert n.get_parameter("threshold").value == 1.5
        n.destroy_node()


def test_the_event_classes_are_rclpy_own():
    import rclpy.event_handler  # this rclpy is Kilted's (Humble's: rclpy.qos_event, checked in test_ros_api.py)

    assert compat.SubscriptionEventCallbacks is rclpy.event_handler.SubscriptionEventCallbacks
    assert compat.QoSRequestedIncompatibleQoSInfo is rclpy.event_handler.QoSRequestedIncompatibleQoSInfo


def test_publisher_count_falls_back_to_the_graph_without_subscription_counts(context):
    """Humble's Subscription has no get_publisher_count: the count comes from Node.count_publishers of its topic."""
    import time
    from types import SimpleNamespace

    from std_msgs.msg import Empty

    n = rclpy.create_node("compat_count", context=context)
    sub = n.create_subscription(Empty, "compat_count_topic", lambda _: None, 1)
    humble_like = SimpleNamespace(topic_name=sub.topic_name)  # a subscription without get_publisher_count
    assert compat.publisher_count(n, sub) == compat.publisher_count(n, humble_like) == 0
    n.create_publisher(Empty, "compat_count_topic", 1)
    deadline = time.monotonic() + 30  # wait for discovery (an event), not for a fixed time
    counts = lambda: (compat.publisher_count(n, sub), compat.publisher_count(n, humble_like))  # noqa: E731
    while time.monotonic() < deadline and counts() != (1, 1):
        time.sleep(0.05)
    assert counts() == (1, 1)
    n.destroy_node()


def test_the_parameter_service_goes_through_the_emulation(node, context):
    """``ros2 param set`` reaches the node through its set_parameters service, which calls
    ``node.set_parameters_atomically`` on Humble as on Kilted: the emulated steps run there too."""
    import threading

    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor

    caller = rclpy.create_node("compat_caller", context=context)
    client = caller.create_client(SetParameters, f"{node.get_fully_qualified_name()}/set_parameters")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(caller)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    try:
        assert client.wait_for_service(timeout_sec=30)
        request = SetParameters.Request(parameters=[Parameter("threshold", value=4).to_parameter_msg()])
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        assert done.wait(30), "no answer from the set_parameters service"
        assert [r.successful for r in future.result().results] == [True]
        assert node.get_parameter("threshold").value == 4.0 and node.applied == [[("threshold", 4.0)]]
    finally:
        executor.shutdown()
        spinning.join(timeout=10)
        caller.destroy_node()
