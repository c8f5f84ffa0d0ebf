"""compressedDepth on the depth input: PNG and RVL payloads as compressed_depth_image_transport writes them
(``compressed_depth.py``) decode to the depth the publisher was given, and the node subscribes to them with
``input.cloud: compressedDepth``."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from cmdr_ros.ros.conversions import ConversionError, depth_image_to_metres, depth_image_to_xyz
from cmdr_ros.ros.conversions.images import decode_rvl
from cmdr_ros.ros.node.wiring import input_topics
from compressed_depth import compressed_depth, inverse_depth, rvl_compress

RNG = np.random.default_rng(23)


def depth_mm(h: int = 48, w: int = 64) -> np.ndarray:
    """A 16UC1 depth image with runs of invalid pixels, isolated ones, large jumps both ways and equal neighbours."""
    d = RNG.integers(1, 65535, (h, w)).astype(np.uint16)
    d[5:9] = 0  # whole rows
    d[:, 10:13] = 0
    d[RNG.random((h, w)) < 0.1] = 0
    d[h // 2, w // 3:w // 2] = 777  # deltas of 0
    d[-1, -5:] = 0  # ends on zeros
    return d


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_16uc1_round_trip(codec):
    depth = depth_mm()
    z = depth_image_to_metres(compressed_depth(depth, codec))
    np.testing.assert_array_equal(z, (depth * 0.001).astype(np.float32))


def test_rvl_decodes_every_value_exactly():
    for image in (depth_mm(), depth_mm(1, 7), np.zeros((3, 5), np.uint16), np.full((4, 9), 65535, np.uint16),
                  np.array([[1, 65535, 1, 0, 0, 2]], np.uint16)):
        np.testing.assert_array_equal(decode_rvl(np.frombuffer(rvl_compress(image), np.uint8)), image)


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_32fc1_inverse_depth_round_trip(codec):
    depth = RNG.uniform(0.3, 12.0, (48, 64)).astype(np.float32)
    depth[0, :7] = np.nan
    q, a, b = inverse_depth(depth)
    z = depth_image_to_metres(compressed_depth(depth, codec))
    ok = q > 0
    np.testing.assert_array_equal(z[ok], np.float32(a) / (q[ok].astype(np.float32) - np.float32(b)))
    assert (z[~ok] == 0).all() and (~ok).sum() > 7  # NaN and beyond depth_max: no measurement
    assert np.abs(z[ok] - depth[ok]).max() < 0.01 * depth[ok].max() ** 2  # inverse-depth quantization


def test_compressed_depth_becomes_the_same_cloud_as_the_raw_image():
    from cmdr_ros.ros.conversions import array_to_image, dict_to_camera_info

    depth = depth_mm(12, 16) // 20 + 300
    cam = {"width": 16, "height": 12, "distortion_model": "plumb_bob", "d": np.zeros(5),
           "k": np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]]), "r": np.eye(3),
           "p": np.array([[20.0, 0, 7.5, 0], [0, 20.0, 5.5, 0], [0, 0, 1, 0]])}
    info = dict_to_camera_info(cam)
    raw = array_to_image(depth, "mono16")
    raw.encoding = "16UC1"
    for codec in ("png", "rvl"):
        np.testing.assert_array_equal(depth_image_to_xyz(compressed_depth(depth, codec), info),
                                      depth_image_to_xyz(raw, info))


def _rvl_msg(body: bytes, fmt: str = "16UC1; compressedDepth rvl") -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = struct.pack("<iff", 0, 0, 0) + body
    return msg


def test_malformed_rvl_is_a_conversion_error():
    good = rvl_compress(depth_mm(8, 8))
    cases = {
        "no RVL size": good[:5],
        r"reports a 0x0 image": struct.pack("<II", 0, 0) + good[8:],
        r"reports a 65535x65535 image": struct.pack("<II", 65535, 65535) + good[8:],
        "ends after": good[:-8],
        "more than its 8x4 pixels": struct.pack("<II", 8, 4) + good[8:],
        "no complete RVL code": struct.pack("<II", 8, 8) + b"\xff" * 8,
        "nibbles: malformed": struct.pack("<II", 8, 8) + b"\xff" * 12 + b"\0" * 4,
    }
    for match, body in cases.items():
        with pytest.raises(ConversionError, match=match):
            depth_image_to_metres(_rvl_msg(body))
    with pytest.raises(ConversionError, match="unsupported compressedDepth format '16UC1; compressedDepth jpeg'"):
        depth_image_to_metres(_rvl_msg(good, "16UC1; compressedDepth jpeg"))


def test_input_cloud_compressed_depth_subscribes_compressed_image_on_depth():
    assert input_topics("rgbd", "raw", "compressedDepth") == [(Image, "image"), (CompressedImage, "depth")]
    assert input_topics("3d", "raw", "compressedDepth") == [(CompressedImage, "depth")]
    assert input_topics("rgbd", "compressed", "depth") == [(CompressedImage, "image"), (Image, "depth")]
    assert input_topics("rgbd") == [(Image, "image"), (PointCloud2, "points")]
