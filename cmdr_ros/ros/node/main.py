"""The inspection node's process: ROS started without its own signal handlers, a multi-threaded executor in a
thread, and a stop at SIGINT/SIGTERM that answers every part still held (``InspectionNode.stop_and_settle``)."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

from cmdr_ros import CmdrError
from cmdr_ros.ros.dds_profile import use_large_message_profile
from cmdr_ros.threads import single_threaded_blas


def run(make_node: Callable[[], Any], args: list[str] | None = None) -> int:
    """Run the node ``make_node()`` builds (after ROS is started) until SIGINT/SIGTERM (every waiting part then gets
    its fail-safe decision) or until autostart fails (its ``exit_code``, 1)."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    dds_note = use_large_message_profile()
    try:
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as e:  # noqa: BLE001 - rcl reports bad --ros-args as a generic RCLError
        raise CmdrError(f"cannot start ROS: {str(e).splitlines()[0][:300]}") from None
    single_threaded_blas()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = make_node()
    node.get_logger().info(dds_note)
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="cmdr_executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.1) and node.exit_code is None and spinner.is_alive():
            pass
        if stop.is_set():
            node.wait_quiet()  # the executor still spins: what the readers accepted reaches a callback
        executor.shutdown(timeout_sec=5.0)
        if stop.is_set():  # no callback runs any more: drain the stragglers, unsubscribe, answer everything
            n = node.stop_and_settle("shutdown", "the node was stopped before this part was judged")
            node.get_logger().info(f"stopping: {n} part(s) not judged yet got the fail-safe decision")
    finally:
        executor.shutdown(timeout_sec=5.0)
        # out of its DDS wait before the node and the context go: a thread still waiting there when the process exits
        # aborts it ("terminate called without an active exception", exit -6, seen once on autostart's exit 1)
        spinner.join(timeout=10.0)
        node.teardown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return node.exit_code or 0
