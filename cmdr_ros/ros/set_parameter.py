"""Set one string parameter of a running node through its ``<node>/set_parameters`` service (rcl_interfaces), the
way ``ros2 param set`` does: ``cmdr promote --node`` puts a model in service with it (the node's model swap,
docs/model_swap.md, answers once the new model judges, or says why it refused)."""
from __future__ import annotations

import threading

import rclpy
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from cmdr_ros import CmdrError


def set_string_parameter(node: str, name: str, value: str, timeout_s: float = 120.0) -> tuple[bool, str]:
    """(successful, reason) of the node ``node`` (its full name, e.g. /cmdr_inspection) for ``name`` := ``value``.
    CmdrError when the node's service does not appear or does not answer within ``timeout_s`` (a swap loads and
    warms up a model before it answers)."""
    service = f"/{node.strip('/')}/set_parameters"
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        client_node = rclpy.create_node("cmdr_promote", context=context)
        client = client_node.create_client(SetParameters, service)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(client_node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        try:
            if not client.wait_for_service(timeout_sec=min(timeout_s, 30.0)):
                raise CmdrError(f"no service {service}: is the node running (on this ROS_DOMAIN_ID)?")
            value_msg = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=value_msg)]))
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout_s):
                client.remove_pending_request(future)
                raise CmdrError(f"{service}: no answer within {timeout_s:g} s")
            result = future.result().results[0]
            return bool(result.successful), str(result.reason)
        finally:
            executor.shutdown()
            spin.join(timeout=10)
            client_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
