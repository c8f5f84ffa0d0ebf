"""nav2_lifecycle_manager brings the node up as cells usually do: the recipe of docs/launch.md (the manager's
params YAML with ``bond_timeout: 0.0``, the node with ``autostart: false``) driven by a test client that makes the
manager's calls in the manager's order (nav2_lifecycle_manager/src/lifecycle_manager.cpp):

startup: for each node of ``node_names`` in order, ``<node>/change_state`` CONFIGURE then ``<node>/get_state`` must
answer inactive; then the same with ACTIVATE / active; after each activate ``createBondConnection``, which with
``bond_timeout <= 0`` creates no bond (the node runs no bondpy: with the default 4 s the manager would abort the
bringup). reset: DEACTIVATE then CLEANUP in reverse order; shutdown: ... then UNCONFIGURED_SHUTDOWN.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

from bringup_model import tiny_2d_checkpoint  # noqa: E402
from node_harness import NodeProcess, RosSide, call_service, cell_frame, lifecycle_state  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "launch.md"
# the state the manager checks with get_state after each transition (transition_state_map_)
GOAL = {Transition.TRANSITION_CONFIGURE: State.PRIMARY_STATE_INACTIVE,
        Transition.TRANSITION_ACTIVATE: State.PRIMARY_STATE_ACTIVE,
        Transition.TRANSITION_DEACTIVATE: State.PRIMARY_STATE_INACTIVE,
        Transition.TRANSITION_CLEANUP: State.PRIMARY_STATE_UNCONFIGURED,
        Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: State.PRIMARY_STATE_FINALIZED}


def docs_yaml(marker: str) -> dict:
    """The first ```yaml block of docs/launch.md containing ``marker``."""
    for block in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S):
        if marker in block:
            return yaml.safe_load(block)
    raise AssertionError(f"docs/launch.md: no yaml block with {marker!r}")


class LifecycleManagerClient:
    """nav2_lifecycle_manager's service calls, from an rclpy node: LifecycleServiceClient per node (created relative
    to the manager, waiting for both services), changeStateForNode (change_state, then get_state == the goal)."""

    def __init__(self, ros: RosSide, params: dict) -> None:
        self.ros, self.params = ros, params
        self.node_names = list(params["node_names"])
        self.clients = {}
        for name in self.node_names:
            change = ros.node.create_client(ChangeState, f"{name}/change_state")
            get = ros.node.create_client(GetState, f"{name}/get_state")
            for client in (get, change):  # the manager's constructor blocks until both services are up
                assert client.wait_for_service(timeout_sec=60), f"no {client.srv_name}"
            self.clients[name] = (change, get)
        self.bonds: list[str] = []

    def get_state(self, name: str) -> int:
        return lifecycle_state(self.clients[name][1])

    def change_state_for_node(self, name: str, transition: int) -> bool:
        r = call_service(self.clients[name][0], ChangeState.Request(transition=Transition(id=transition)), 180)
        # the manager: change_state(...) succeeded and get_state() == the goal; a lost reply: the state decides
        if (r is not None and not r.success) or self.get_state(name) != GOAL[transition]:
            return False
        if transition == Transition.TRANSITION_ACTIVATE and float(self.params["bond_timeout"]) > 0:
            self.bonds.append(name)  # the manager would now wait bond_timeout/2 for a bond the node never forms
            return False
        return True

    def change_state_for_all(self, transition: int) -> bool:
        forward = transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE)
        names = self.node_names if forward else self.node_names[::-1]
        return all(self.change_state_for_node(n, transition) for n in names)

    def startup(self) -> bool:
        return (self.change_state_for_all(Transition.TRANSITION_CONFIGURE)
                and self.change_state_for_all(Transition.TRANSITION_ACTIVATE))

    def reset(self) -> bool:
        return (self.change_state_for_all(Transition.TRANSITION_DEACTIVATE)
                and self.change_state_for_all(Transition.TRANSITION_CLEANUP))

    def close(self) -> None:
        for change, get in self.clients.values():
            self.ros.node.destroy_client(change)
            self.ros.node.destroy_client(get)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_2d_checkpoint(tmp_path_factory)


def test_docs_recipe_params(tmp_path):
    """The recipe's two YAML blocks: the manager's (no bond) and the node's (no autostart), as the ROS tools read them."""
    manager = docs_yaml("bond_timeout")
    (section,) = manager.values()
    params = section["ros__parameters"]
    assert float(params["bond_timeout"]) == 0.0 and params["autostart"] is True
    assert params["node_names"] == ["cmdr_inspection"]
    node = docs_yaml("autostart: false")
    from cmdr_ros.ros.node.parameters import read_params_file

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node))
    assert read_params_file(path)["autostart"] is False


def test_nav2_lifecycle_manager_recipe_brings_the_node_up(ros, checkpoint, tmp_path):
    manager = next(iter(docs_yaml("bond_timeout").values()))["ros__parameters"]
    node_params = tmp_path / "node.yaml"
    node_params.write_text(yaml.safe_dump(docs_yaml("autostart: false")))
    node = NodeProcess(tmp_path, ros.domain_id, {"checkpoint": checkpoint, "device": "cpu", "warmup": "false",
                                                 "diagnostics_period": 0.5}, params_file=node_params)
    client = None
    try:
        client = LifecycleManagerClient(ros, manager)
        assert client.get_state("cmdr_inspection") == State.PRIMARY_STATE_UNCONFIGURED  # waits for the manager
        t0 = time.monotonic()
        assert client.startup(), node.logs()
        print(f"\nmanager startup (configure + activate through the services): {time.monotonic() - t0:.1f} s")
        assert client.bonds == []
        node.wait_active((ros.image_pub,), ros)
        stamp = ros.next_stamp()
        ros.publish_set(stamp, rgb=cell_frame(7).rgb)
        assert ros.result(stamp)["judged"] == "true"
        assert client.reset(), node.logs()  # the manager's reset: deactivate, cleanup
        assert client.change_state_for_all(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN), node.logs()
    finally:
        if client is not None:
            client.close()
        code = node.stop()
    assert code == 0, node.logs()
