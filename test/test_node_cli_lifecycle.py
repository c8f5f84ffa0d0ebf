"""`cmdr node` takes ROS arguments after `--ros-args` (as every ROS executable does), and a failing shutdown
transition is reported like the other transitions instead of vanishing into rclpy's silent ERROR."""
import pytest

from cmdr_ros.cli.main import build_parser, main, node_argv, split_ros_args


def _node_argv(argv):
    """What `cmdr node ARGV...` hands to rclpy (main's own split, then the node verb's argv)."""
    head, tail = split_ros_args(argv)
    args = build_parser().parse_args(head)
    args.ros_args = [*args.ros_args, *tail]
    return node_argv(args)


def test_cmdr_node_takes_ros_args_as_ros_executables_do(tmp_path):
    cell = tmp_path / "cell.yaml"
    argv = _node_argv(["node", "--checkpoint", "m.ckpt", "--ros-args", "-p", "threshold:=3",
                       "--params-file", str(cell), "-r", "image:=/cam/image", "--log-level", "debug"])
    # --params-file after --ros-args is ROS's own option, not cmdr's shorthand: it stays where ROS reads it
    assert argv == ["cmdr_node", "--ros-args", "-p", "checkpoint:=m.ckpt", "-p", "threshold:=3",
                    "--params-file", str(cell), "-r", "image:=/cam/image", "--log-level", "debug"]
    # both forms together, and the shorthands before them
    argv = _node_argv(["node", "--mode", "3d", "--namespace", "cell_a", "--ros-args", "-p", "threshold:=3", "--",
                       "--ros-args", "-p", "warmup:=false"])
    assert argv == ["cmdr_node", "--ros-args", "-p", "mode:=3d", "-r", "__ns:=/cell_a", "-p", "threshold:=3",
                    "-p", "warmup:=false"]
    pytest.importorskip("rclpy")
    from rclpy.utilities import remove_ros_args

    assert remove_ros_args(argv) == ["cmdr_node"]  # rclpy reads every one of them


def test_cmdr_node_ros_args_reach_the_node(monkeypatch):
    """Through main() itself (today's 'unrecognized arguments: --ros-args'), up to the node's entry point."""
    pytest.importorskip("rclpy")
    import cmdr_ros.ros.node.inspection_node as node_module

    seen = []
    monkeypatch.setattr(node_module, "main", lambda argv: seen.append(argv) or 0)
    assert main(["node", "--checkpoint", "CK", "--ros-args", "-p", "threshold:=3"]) == 0
    assert seen == [["cmdr_node", "--ros-args", "-p", "checkpoint:=CK", "-p", "threshold:=3"]]


def test_ros_args_belong_to_the_node_verb_only(capsys):
    with pytest.raises(SystemExit) as e:
        main(["dds-profile", "--ros-args", "-p", "x:=1"])
    assert e.value.code == 2
    assert "only `cmdr node` takes ROS arguments" in capsys.readouterr().err


def test_a_failing_shutdown_is_reported_not_swallowed(monkeypatch):
    """An exception in on_shutdown: the transition fails with its cause logged and in the state text (rclpy alone
    turns it into a silent ERROR)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from domains import new_domain
    from cmdr_ros.ros.node.inspection_node import InspectionNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=new_domain(), signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = InspectionNode(context=ctx, parameter_overrides=[Parameter("autostart", value=False)])
        logged = []
        monkeypatch.setattr(node, "get_logger", lambda: _Recorder(logged))

        def broken_teardown():
            raise RuntimeError("simulated release failure")

        monkeypatch.setattr(node, "teardown", broken_teardown)
        assert node.trigger_shutdown() == TransitionCallbackReturn.FAILURE
        assert node.state_text == "cannot shutdown: RuntimeError: simulated release failure"
        assert any("cannot shutdown: RuntimeError: simulated release failure" in m for m in logged)
        monkeypatch.undo()
    finally:
        if node is not None:
            node.teardown()
            node.destroy_node()
        rclpy.shutdown(context=ctx)


class _Recorder:
    def __init__(self, out):
        self.out = out

    def error(self, msg, *a, **k):
        self.out.append(msg)

    info = warning = debug = error
