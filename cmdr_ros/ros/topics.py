"""Every topic name of the package, in one table: the node's inputs and outputs, and what bags and the demo record.

The node subscribes to relative names (remap them onto the cell's topics) and publishes its decisions under its own
name (``~/result`` ...). Bags written by ``cmdr bag from-dataset`` and the demo carry the camera's topics below.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Bool, Float32, Header, String

from cmdr_ros.ros.node.parameters import NODE_NAME
from cmdr_ros.ros.node.typed_decision import TYPES as TYPED_TYPES


# the node's inputs, relative, and their message types: "depth" replaces "points" with input.cloud depth or
# compressedDepth; "part_id" is optional (the part's id as frame_id, stamped as its inputs)
INPUT_TYPES = {"image": Image, "points": PointCloud2, "depth": Image, "camera_info": CameraInfo, "part_id": Header}
INPUTS = tuple(INPUT_TYPES)
# an image input through image_transport ("image" with input.image_transport compressed, "depth" with input.cloud
# compressedDepth)
COMPRESSED_TYPE = CompressedImage
# the node's outputs, private (~/name): decisions always, maps only when enabled
DECISION_OUTPUTS = ("score", "reject", "result")
MAPS = ("heatmap", "anomaly_map", "anomaly_cloud")
OUTPUT_TYPES = {"score": Float32, "reject": Bool, "result": DiagnosticArray, "heatmap": Image, "anomaly_map": Image,
                "anomaly_cloud": PointCloud2}
# the typed outputs (vision_msgs, where installed: typed_decision.AVAILABLE): the decision a controller uses
# (Classification, stamped as the judged input, deep like the decisions) and the pipeline's description (VisionInfo,
# latched)
TYPED = ("decision", "vision_info")
OUTPUT_TYPES.update(TYPED_TYPES)
# the node's state for a controller (~/ready), latched (transient local): true only while active with a model
STATE = ("ready",)
STATE_TYPES = {"ready": Bool}
PART_ID = "/part_id"  # where a cell publishes part ids (the node's `part_id`, and what `cmdr bag eval` reads)

# the camera's topics as recorded (bags of ``cmdr bag from-dataset``, the demo's cell)
CAMERA = {"image": "/camera/image", "points": "/camera/points", "camera_info": "/camera/camera_info"}
# what a dataset bag carries besides the camera: ground truth mask and the dataset sample each frame came from
# ground truth recorded beside the inputs (for `cmdr bag eval`): a frame's mask; a scan's per-point labels as the
# "intensity" (0 / 1) of a PointCloud2 of the same points in the same order, stamped as the scan
RECORDED = CAMERA | {"gt": "/camera/gt_mask", "gt_points": "/cmdr/gt_points", "sample": "/cmdr/sample"}
PROFILER = {"points": "/profiler/points"}  # the demo's laser profilometer (3D-only)
RECORDED_TYPES = {"image": Image, "points": PointCloud2, "camera_info": CameraInfo, "gt": Image,
                  "gt_points": PointCloud2, "sample": String}  # also the profiler's points

DIAGNOSTICS = "/diagnostics"
TF_STATIC = "/tf_static"  # tf2 static transforms: latched (transient-local) for late joiners
CLOCK = "/clock"


def type_name(msg_type: type) -> str:
    """The ROS 2 name of a message class, as bags record it (sensor_msgs.msg.Image -> sensor_msgs/msg/Image)."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


def output_topic(name: str, node: str = NODE_NAME, namespace: str = "") -> str:
    """The absolute name of the node's output ``name`` (e.g. result -> /cmdr_inspection/result)."""
    known = DECISION_OUTPUTS + MAPS + TYPED + STATE
    if name not in known:
        raise ValueError(f"unknown output {name!r}: one of {', '.join(known)}")
    return f"{namespace.rstrip('/')}/{node}/{name}" if namespace else f"/{node}/{name}"
