"""The inputs cameras really send, through a running node: a JPEG/PNG sensor_msgs/CompressedImage beside a 16UC1
depth image (registered to the colour camera, back-projected with camera_info) instead of a PointCloud2; and a
per-input QoS set with the standard ROS QoS override parameters."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from cmdr_ros.ros.conversions import array_to_image
from node_harness import DEEP, cell_camera_info, cell_frame, start_node, train_cell_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs_model")
    return train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")


@pytest.fixture(scope="module")
def publishers(ros):
    image = ros.node.create_publisher(CompressedImage, "/camera/color/image_raw/compressed", DEEP)
    # the depth driver publishes best-effort: the node's own default (reliable) would never match it
    depth = ros.node.create_publisher(Image, "/camera/aligned_depth/image_raw",
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
    yield image, depth
    ros.node.destroy_publisher(image)
    ros.node.destroy_publisher(depth)


@pytest.fixture(scope="module")
def node(ros, model, publishers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node_inputs")
    params_file = tmp / "params.yaml"
    params_file.write_text(
        "/**:\n  ros__parameters:\n    qos_overrides:\n      /camera/aligned_depth/image_raw:\n"
        "        subscription:\n          reliability: best_effort\n")
    yield from start_node(ros, tmp, {"checkpoint": model["checkpoint"], "input.image_transport": "compressed",
                                     "input.cloud": "depth"}, (*publishers, ros.info_pub), params_file=params_file,
                          ros_args=("-r", "image:=/camera/color/image_raw/compressed",
                                    "-r", "depth:=/camera/aligned_depth/image_raw"))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_and_depth_image_are_judged(ros, node, publishers, fmt):
    image_pub, depth_pub = publishers
    part = cell_frame(77)
    stamp = ros.next_stamp()
    info = cell_camera_info()
    info.header = Header(stamp=stamp, frame_id="camera")
    ros.info_pub.publish(info)  # first, and held by the node's reader: a depth image needs it
    assert ros.info_pub.wait_for_all_acked(Duration(seconds=10))
    ok, data = cv2.imencode(f".{'jpg' if fmt == 'jpeg' else 'png'}", part.rgb[..., ::-1])
    assert ok
    image_pub.publish(CompressedImage(header=Header(stamp=stamp, frame_id="camera"),
                                      format=f"rgb8; {fmt} compressed bgr8", data=data.tobytes()))
    depth = array_to_image(np.round(part.xyz[..., 2] * 1000).astype(np.uint16), "mono16",
                           Header(stamp=stamp, frame_id="camera"))
    depth.encoding = "16UC1"  # millimetres, as depth drivers publish (REP 118)
    depth_pub.publish(depth)
    v = ros.result(stamp)
    assert v["judged"] == "true", (v, node.logs())
    assert v["inputs"] == "image+depth" and v["alignment"] == "aligned" and v["transform"] == "identical_frames"
    valid = part.xyz[..., 2] > 0
    assert float(v["coverage"]) == pytest.approx(float(valid.mean()), abs=1e-3)
