"""Replay a recorded bag into the inspection node and watch it in RViz (a real ROS 2 install).

    ros2 launch cmdr_ros replay.launch.py bag:=demo_out/cell_bag checkpoint:=demo_out/model.ckpt

Bags written by `cmdr bag from-dataset` (or the demo) carry /camera/image, /camera/points and
/camera/camera_info; the node's inputs are remapped onto them (override with image:=, points:=, camera_info:=).
The player starts when the node reaches the active state (not after a guessed delay), publishes the bag's /clock
(``--clock``) and the node runs on it (use_sim_time), so stamps, tf lookups and diagnostics follow the recording.
Every argument of inspection.launch.py (params_file, namespace, input_reliability, threshold, ...) is forwarded.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import ExecuteProcess, OpaqueFunction, RegisterEventHandler

from cmdr_ros.ros.dds_profile import use_large_message_profile
from cmdr_ros.ros.launch_arguments import inspection_launch
from cmdr_ros.ros.topics import CAMERA

REPLAY_ARGS = {
    "bag": ("", "rosbag2 folder to play"),
    "rate": ("1.0", "playback rate"),
    "loop": ("false", "replay forever"),
    "image": (CAMERA["image"], "image topic in the bag"),
    "points": (CAMERA["points"], "point cloud topic in the bag"),
    "camera_info": (CAMERA["camera_info"], "camera info topic in the bag"),
    "use_rviz": ("true", "start RViz"),
}


def player_cmd(values: dict) -> list:
    """``ros2 bag play`` with the recording's clock."""
    cmd = ["ros2", "bag", "play", values["bag"], "--rate", values.get("rate", "1.0"), "--clock"]
    if str(values.get("loop", "false")).lower() in ("true", "1"):
        cmd.append("--loop")
    return cmd


def replay_actions(values: dict, share: str) -> list:
    """The node (sim time unless told otherwise), RViz, and the player started once the node is active."""
    from launch_ros.event_handlers import OnStateTransition

    if not values.get("bag"):
        raise ValueError("launch argument bag:=FOLDER is required")
    values = {**values, "use_sim_time": values.get("use_sim_time") or "true"}
    actions = inspection_launch(share).node_actions(values, share)
    env = dict(os.environ)  # the player publishes image and cloud from one process: the large-message profile
    use_large_message_profile(env)
    play = ExecuteProcess(cmd=player_cmd(values), output="screen",
                          additional_env={k: env[k] for k in ("FASTDDS_DEFAULT_PROFILES_FILE",) if k in env})
    return actions + [RegisterEventHandler(OnStateTransition(target_lifecycle_node=actions[0], goal_state="active",
                                                             entities=[play]))]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    return LaunchDescription(inspection_launch(share).declare_arguments(share, REPLAY_ARGS) + [OpaqueFunction(
        function=lambda context: replay_actions(dict(context.launch_configurations), share))])
