"""The node parameters that launch/inspection.launch.py (and so replay and two_cameras) takes as launch arguments.

A launch argument is typed and described by the parameter it overrides (``node.parameters.PARAMETERS``, the one
table of what a parameter means), so an argument never tells another story than its parameter; docs/launch.md's
table is generated from here (``tools/doc_tables.py``). ROS-free: the launch files and the doc tool import it.
"""
from __future__ import annotations

from types import ModuleType

from cmdr_ros.ros.node.parameters import PARAMETERS

# launch argument -> (node parameter, what the launch adds to the parameter's description; empty: nothing)
OVERRIDES = {
    "checkpoint": ("checkpoint", ""),
    "mode": ("mode", ""),
    "device": ("device", ""),
    "threshold": ("threshold", ""),
    "autostart": ("autostart", "false under a lifecycle manager"),
    "input_reliability": ("input.reliability", "RViz follows it"),
    "image_transport": ("input.image_transport", ""),
    "cloud": ("input.cloud", ""),
    "audit_database": ("audit.database", "several nodes may share one"),
    "hardware_id": ("hardware_id", ""),
    "use_sim_time": ("use_sim_time", ""),
}
# rclpy's own parameter (not in PARAMETERS): (default, description)
USE_SIM_TIME = (False, "follow /clock (replaying a bag with --clock)")


def override_arguments() -> dict[str, tuple[str, type, str]]:
    """Launch argument -> (node parameter, its type: str, float or bool, description)."""
    out = {}
    for arg, (param, note) in OVERRIDES.items():
        default, text, _ = PARAMETERS[param] if param in PARAMETERS else (*USE_SIM_TIME, None)
        out[arg] = (param, type(default), f"{text}; {note}" if note else text)
    return out


def markdown_table() -> str:
    """docs/launch.md's table of the launch arguments that override a node parameter."""
    rows = ["| argument | node parameter | meaning |", "|---|---|---|"]
    for arg, (param, _, text) in override_arguments().items():
        rows.append(f"| `{arg}` | `{param}` | {text.replace('|', '/')} |")
    return "\n".join(rows)


def inspection_launch(share: str) -> ModuleType:
    """The installed ``launch/inspection.launch.py`` under ``share`` (the package's share directory) as a module: the
    other launch files build their nodes and arguments with its ``node_actions`` and ``declare_arguments``."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("cmdr_inspection_launch",
                                                  os.path.join(share, "launch", "inspection.launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
