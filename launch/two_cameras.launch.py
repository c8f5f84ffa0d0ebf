"""Two cameras, two inspection nodes, one audit store: each node in its own namespace judges its own camera.

    ros2 launch cmdr_ros two_cameras.launch.py checkpoint:=/cell/model.ckpt
    ros2 launch cmdr_ros two_cameras.launch.py checkpoint_a:=/cell/top.ckpt checkpoint_b:=/cell/side.ckpt \\
        namespace_a:=cell1/top namespace_b:=cell1/side audit_database:=postgresql://cmdr@db/plant

Per camera (suffix _a / _b): namespace (default cam_a / cam_b), checkpoint (empty: the shared ``checkpoint``),
the input topics image, points, depth, camera_info, part_id (relative names resolve under the camera's namespace:
/cam_a/image ...) and hardware_id (empty: the node's name). Every other argument of inspection.launch.py
(params_file, mode, device, threshold, input_reliability, image_transport, cloud, node_name, log_level, respawn,
use_rviz, ...) applies to both nodes. Both nodes write to one audit store: ``audit_database`` (empty: both use
$ROS_LOG_DIR/cmdr_audit.db); each row names its node. Outputs: /cam_a/cmdr_inspection/result, /cam_b/... .
"""
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import OpaqueFunction

from cmdr_ros.ros.launch_arguments import inspection_launch

CAMERAS = ("a", "b")
PER_CAMERA = {
    "namespace": ("cam_{}", "namespace of camera {}'s node and inputs"),
    "checkpoint": ("", "camera {}'s model (empty: checkpoint)"),
    "image": ("image", "camera {}'s RGB image topic"),
    "points": ("points", "camera {}'s point cloud topic"),
    "depth": ("depth", "camera {}'s depth image topic (cloud:=depth)"),
    "camera_info": ("camera_info", "camera {}'s calibration topic"),
    "part_id": ("part_id", "camera {}'s part id topic"),
    "hardware_id": ("", "camera {}'s /diagnostics hardware_id (empty: the node's name)"),
}
SHARED = {"checkpoint": ("", "model of both cameras (checkpoint_a / checkpoint_b override it)")}


def own_arguments() -> dict:
    """{name: (default, description)} of the per-camera arguments, and the shared checkpoint."""
    table = dict(SHARED)
    for cam in CAMERAS:
        for name, (default, text) in PER_CAMERA.items():
            table[f"{name}_{cam}"] = (default.format(cam), text.format(cam))
    return table


def camera_values(values: dict, cam: str) -> dict:
    """The launch values of one camera's node: the shared ones, with its own per-camera values."""
    own = {name: values.get(f"{name}_{cam}", "") for name in PER_CAMERA}
    own["checkpoint"] = own["checkpoint"] or values.get("checkpoint", "")
    if not str(own["namespace"]).strip("/"):
        raise ValueError(f"launch argument namespace_{cam}: the two nodes need a namespace each")
    return {**values, **own}


def two_camera_actions(values: dict, share: str) -> list:
    inspection = inspection_launch(share)
    cams = [camera_values(values, cam) for cam in CAMERAS]
    if cams[0]["namespace"].strip("/") == cams[1]["namespace"].strip("/"):
        raise ValueError("launch arguments namespace_a and namespace_b: the two nodes need different namespaces")
    return [action for cam in cams for action in inspection.node_actions(cam, share)]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    declared = inspection_launch(share).declare_arguments(share, own_arguments(), without=tuple(PER_CAMERA))
    return LaunchDescription(declared + [OpaqueFunction(
        function=lambda context: two_camera_actions(dict(context.launch_configurations), share))])
