"""Launch the CMDR-IAD inspection node (and optionally RViz).

    ros2 launch cmdr_ros inspection.launch.py checkpoint:=/path/model.ckpt
    ros2 launch cmdr_ros inspection.launch.py params_file:=/cell/inspection.yaml threshold:=3
    ros2 launch cmdr_ros inspection.launch.py checkpoint:=model.ckpt mode:=3d points:=/profiler/points use_rviz:=true
    ros2 launch cmdr_ros inspection.launch.py checkpoint:=m.ckpt cloud:=depth depth:=/cam/depth/image_rect_raw \
        image_transport:=compressed image:=/cam/color/image_raw/compressed node_name:=cell_a_inspection \
        log_level:=debug respawn:=true

Parameters come from ``params_file`` (default: the package's config/inspection.yaml); a launch argument overrides
the file only when it is given (an empty argument, the default, leaves the file's value). Values are typed here
(``threshold:=3`` is the double 3.0), so rclpy never refuses them. The node is a managed (lifecycle) node; with
autostart true (the default) it configures and activates itself. ``node_name`` renames it: the params file's sections
for ``cmdr_inspection`` then apply to the new name. RViz (``use_rviz:=true``; rviz2 is an optional dependency) shows
the node's topics under its namespace and name, the image topic given with the input QoS, in ``fixed_frame``.
Every argument: docs/launch.md.
"""
import atexit
import os
import shutil
import tempfile
from typing import Any

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from cmdr_ros.ros.launch_arguments import override_arguments
from cmdr_ros.ros.node.parameters import NODE_NAME
from cmdr_ros.ros.topics import INPUTS

# the launch arguments that override a node parameter: cmdr_ros.ros.launch_arguments (empty = not given: the params
# file decides); the launch's own arguments:
ARGS = {
    "node_name": (NODE_NAME, "node name (its outputs are ~/result ...: /NAMESPACE/NODE_NAME/result)"),
    "namespace": ("", "namespace of the node and its relative topics"),
    "image": ("image", "RGB image topic (sensor_msgs/Image; CompressedImage with image_transport:=compressed)"),
    "points": ("points", "point cloud topic (sensor_msgs/PointCloud2; cloud:=points)"),
    "depth": ("depth", "depth image topic (16UC1 mm or 32FC1 m; cloud:=depth)"),
    "camera_info": ("camera_info", "camera calibration topic (sensor_msgs/CameraInfo)"),
    "part_id": ("part_id", "part id topic (std_msgs/Header: the part's id in frame_id, stamped as its inputs)"),
    "log_level": ("info", "ROS log level: debug | info | warn | error | fatal"),
    "respawn": ("false", "start the node again when its process ends (autostart:=false: it comes back unconfigured)"),
    "respawn_delay": ("2.0", "seconds before a respawn"),
    "sigterm_timeout": ("15", "seconds launch waits after Ctrl-C before it sends the node SIGTERM (launch's own "
                        "default, 5, is shorter than the node's exit on a loaded machine)"),
    "use_rviz": ("false", "start RViz with config/inspection.rviz, following namespace, image and fixed_frame"),
    "fixed_frame": ("camera", "RViz fixed frame (the camera's optical frame on your cell)"),
}


def parameter_overrides(values: dict) -> dict:
    """The node parameters given as launch arguments, typed; the ones left empty are not overridden."""
    out: dict[str, Any] = {}
    for arg, (param, kind, _) in override_arguments().items():
        raw = str(values.get(arg, "")).strip()
        if raw == "":
            continue
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"launch argument {arg}:={raw}: expected true or false")
            out[param] = raw.lower() in ("true", "1")
        elif kind is float:
            try:
                out[param] = float(raw)
            except ValueError:
                raise ValueError(f"launch argument {arg}:={raw}: expected a number") from None
        else:
            out[param] = raw
    return out


def flag(values: dict, name: str) -> bool:
    raw = str(values.get(name, "false")).strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise ValueError(f"launch argument {name}:={raw}: expected true or false")
    return raw in ("true", "1")


def number(values: dict, name: str, default: float) -> float:
    raw = str(values.get(name) or "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"launch argument {name}:={raw}: expected a number") from None


def resolve(topic: str, namespace: str) -> str:
    """A topic name as the node resolves it (relative names go under its namespace)."""
    if topic.startswith("/"):
        return topic
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{topic}"


def node_name(values: dict) -> str:
    return str(values.get("node_name") or NODE_NAME).strip()


def params_for(path: str, name: str) -> str:
    """The params file for a node called ``name``: ``path`` itself for the default name, else a copy with the
    sections addressed to ``cmdr_inspection`` (``/**/cmdr_inspection``, ``cmdr_inspection``, ``/cmdr_inspection``)
    addressed to ``name`` (``/**`` and the other nodes' sections as they are)."""
    if name == NODE_NAME:
        return path
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):  # not a parameters file: the node reports it
        return path
    renamed = {f"/**/{NODE_NAME}": f"/**/{name}", NODE_NAME: name, f"/{NODE_NAME}": f"/{name}"}
    out = {renamed.get(key, key): value for key, value in doc.items()}
    folder = tempfile.mkdtemp(prefix="cmdr_params_")
    atexit.register(shutil.rmtree, folder, True)  # read at every (re)start of the node: kept while launch runs
    target = os.path.join(folder, os.path.basename(path))
    with open(target, "w") as f:
        yaml.safe_dump(out, f, sort_keys=False)
    return target


def input_settings(values: dict, params_file: str, name: str) -> tuple[str, str]:
    """input.reliability and input.image_transport as the node called ``name`` will have them: the launch argument,
    else ``params_file``'s value for it, else the node's default."""
    from cmdr_ros.ros.node.parameters import PARAMETERS, read_params_file

    given = parameter_overrides(values)
    keys = ("input.reliability", "input.image_transport")
    from_file = {}
    if not all(k in given for k in keys):
        try:
            from_file = read_params_file(params_file, name)
        except Exception:  # noqa: BLE001 - an unreadable or invalid file: the node refuses to configure, says why
            pass
    reliability, transport = (given.get(k, from_file.get(k, PARAMETERS[k][0])) for k in keys)
    return reliability, transport


RVIZ_RELIABILITY = {"reliable": "Reliable", "best_effort": "Best Effort"}


def rviz_config(text: str, namespace: str, image: str, fixed_frame: str, name: str = NODE_NAME,
                reliability: str = "reliable", image_transport: str = "raw") -> str:
    """The RViz config with the node's output topics under ``namespace``/``name``, the camera display on ``image``
    subscribed with the inputs' ``reliability`` (a reliable display never matches a best-effort driver), and the
    fixed frame ``fixed_frame``. A compressed input: RViz picks the transport from the topic's last name, so a topic
    ending in /compressed is shown through it; any other name would be subscribed as a raw Image (a type mismatch),
    so the camera display is disabled and the heatmap (the image with the anomaly overlay) shows the part."""
    import yaml

    doc = yaml.safe_load(text)
    manager = doc["Visualization Manager"]
    manager["Global Options"]["Fixed Frame"] = fixed_frame
    node = resolve(name, namespace)
    for display in manager["Displays"]:
        topic = display.get("Topic")
        if not isinstance(topic, dict):
            continue
        if topic["Value"].startswith(f"/{NODE_NAME}/"):
            topic["Value"] = node + topic["Value"][len(NODE_NAME) + 1:]
        else:  # the camera image
            topic["Value"] = resolve(image, namespace)
            topic["Reliability Policy"] = RVIZ_RELIABILITY[reliability]
            if image_transport == "compressed" and not topic["Value"].endswith("/compressed"):
                display["Enabled"] = display["Value"] = False
    return yaml.safe_dump(doc, sort_keys=False)


def node_actions(values: dict, share: str) -> list:
    """The lifecycle node (and RViz when asked) for these launch argument values."""
    from launch_ros.actions import LifecycleNode, Node

    name, namespace = node_name(values), values.get("namespace", "")
    respawn_delay, sigterm_timeout = (number(values, arg, default)
                                      for arg, default in (("respawn_delay", 0.0), ("sigterm_timeout", 5.0)))
    log_level = str(values.get("log_level", "")).strip()
    params_file = params_for(values["params_file"], name)
    node = LifecycleNode(
        package="cmdr_ros",
        executable="inspection_node",
        name=name,
        namespace=namespace,
        output="screen",
        parameters=[params_file, parameter_overrides(values)],
        remappings=[(topic, values.get(topic) or topic) for topic in INPUTS],
        ros_arguments=["--log-level", log_level] if log_level else None,
        respawn=flag(values, "respawn"),
        respawn_delay=respawn_delay,
        sigterm_timeout=str(sigterm_timeout),  # launch's default 5 s can be shorter than the node's exit
    )
    actions = [node]
    if flag(values, "use_rviz"):
        reliability, transport = input_settings(values, params_file, name)
        with open(os.path.join(share, "config", "inspection.rviz")) as f:
            text = rviz_config(f.read(), namespace, values.get("image", "image"), values.get("fixed_frame", "camera"),
                               name, reliability, transport)
        path = os.path.join(tempfile.mkdtemp(prefix="cmdr_rviz_"), "inspection.rviz")
        with open(path, "w") as f:
            f.write(text)
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=namespace,
                            arguments=["-d", path], output="log"))
    return actions


def declare_arguments(share: str, own: dict | None = None, without: tuple = ()) -> list:
    """A DeclareLaunchArgument per launch argument: ``own`` {name: (default, description)} first (replay.launch.py
    adds its own and overrides defaults of ARGS with them), then the parameter overrides (empty: the params file's
    value), ARGS and params_file, except the names in ``without`` (two_cameras.launch.py declares those per
    camera)."""
    own = own or {}
    table = {name: ("", f"{text} (empty: the params file's value)")
             for name, (_, _, text) in override_arguments().items()}
    table.update(ARGS)
    table["params_file"] = (os.path.join(share, "config", "inspection.yaml"),
                            "node parameters YAML (defaults: config/inspection.yaml)")
    table = {**own, **{name: value for name, value in table.items() if name not in own and name not in without}}
    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in table.items()]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    return LaunchDescription(declare_arguments(share) + [OpaqueFunction(
        function=lambda context: node_actions(dict(context.launch_configurations), share))])
