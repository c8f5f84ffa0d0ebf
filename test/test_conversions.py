"""Tests for cmdr_ros.ros.conversions: round trips, worked values, reference decoders, real PCL clouds.

Reference decoders run on the very same messages: ``pointcloud2.read_points`` (PyPI port of
sensor_msgs_py) takes the rclpy PointCloud2 as is; ``rosbags.image.message_to_cvimage`` gets a rosbags
Image built from the same bytes (it ignores ``step``, so padded images are checked against its
decoding of the unpadded twin). What the conversions hand to OpenCV (Bayer, YUV, compressed payloads) is
built here without OpenCV: mosaics and BT.601 YUV in NumPy, JPEG/PNG/TIFF with PIL, and compared with
NumPy references (bilinear demosaic, the pinhole formula, the compressedDepth quantization).
"""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from PIL import Image as PILImage
from pointcloud2 import read_points
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cmdr_ros import CmdrError
from cmdr_ros.ros.conversions import (
    ConversionError,
    array_to_image,
    camera_info_to_dict,
    compressed_image_to_rgb,
    depth_image_to_metres,
    depth_image_to_xyz,
    dict_to_camera_info,
    image_to_array,
    image_to_rgb,
    pointcloud2_fields,
    pointcloud2_to_xyz,
    xyz_to_pointcloud2,
)

RNG = np.random.default_rng(7)
# encoding -> (dtype, channels) as REP 118 / sensor_msgs/image_encodings define them
ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
    "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3), "rgba16": (np.uint16, 4), "bgra16": (np.uint16, 4),
    "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3), "8UC4": (np.uint8, 4), "16UC3": (np.uint16, 3),
    "16UC4": (np.uint16, 4),
    **{f"bayer_{p}8": (np.uint8, 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": (np.uint16, 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{enc: (np.uint8, 2) for enc in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2")},
}
BAYER = ("rggb", "bggr", "gbrg", "grbg")
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def _random_image(encoding: str, height: int = 5, width: int = 7) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype is np.float32:
        return RNG.uniform(0.1, 3.0, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _image_msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image built byte by byte: rows of ``arr`` in the given byte order, then ``pad`` garbage bytes."""
    height, width = arr.shape[:2]
    rows = arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<")).reshape(height, -1)
    rows = rows.view(np.uint8).reshape(height, -1)
    buf = np.full((height, rows.shape[1] + pad), 0xAB, dtype=np.uint8)
    buf[:, : rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=buf.shape[1])
    msg.data = buf.tobytes()
    return msg


def _rosbags_image(msg: Image):
    rb_header = TYPESTORE.types["std_msgs/msg/Header"](
        stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    return TYPESTORE.types["sensor_msgs/msg/Image"](
        header=rb_header, height=msg.height, width=msg.width, encoding=msg.encoding,
        is_bigendian=int(msg.is_bigendian), step=msg.step,
        data=np.frombuffer(bytes(msg.data), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "32FC1"])
def test_array_to_image_round_trip(encoding):
    arr = _random_image(encoding)
    header = Header(stamp=Time(sec=12, nanosec=34), frame_id="cam")
    msg = array_to_image(arr, encoding, header)
    dtype, channels = ENCODINGS[encoding]
    assert (msg.encoding, msg.height, msg.width, msg.is_bigendian) == (encoding, 5, 7, 0)
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 12
    out = image_to_array(msg)
    assert out.dtype == dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_array_to_image_32fc1_accepts_float64():
    arr = np.array([[0.25, 1.5]], dtype=np.float64)
    np.testing.assert_array_equal(image_to_array(array_to_image(arr, "32FC1")), arr.astype(np.float32))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [0, 5])  # 5: padding that is not a multiple of the pixel size
@pytest.mark.parametrize("bigendian", [False, True])
def test_image_to_array_padding_and_endianness(encoding, pad, bigendian):
    arr = _random_image(encoding)
    msg = _image_msg(arr, encoding, pad=pad, bigendian=bigendian)
    out = image_to_array(msg)
    assert out.dtype == arr.dtype and out.dtype.isnative and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_image_to_rgb_worked_values():
    px = np.array([[[10, 20, 30, 40]]], dtype=np.uint8)
    expect = {"rgb8": [10, 20, 30], "bgr8": [30, 20, 10], "rgba8": [10, 20, 30], "bgra8": [30, 20, 10]}
    for encoding, rgb in expect.items():
        channels = ENCODINGS[encoding][1]
        out = image_to_rgb(_image_msg(px[..., :channels].copy(), encoding, pad=3))
        assert out.dtype == np.uint8 and out.shape == (1, 1, 3)
        assert out[0, 0].tolist() == rgb, encoding
    assert image_to_rgb(_image_msg(np.array([[77]], np.uint8), "mono8"))[0, 0].tolist() == [77] * 3
    for bigendian in (False, True):  # mono16 keeps the high byte: 0x1234 -> 0x12
        mono16 = _image_msg(np.array([[0x1234, 0xFFFF]], np.uint16), "mono16", bigendian=bigendian)
        assert image_to_rgb(mono16)[0].tolist() == [[0x12] * 3, [0xFF] * 3]


def test_image_to_rgb_depth_is_stretched_for_display():
    # valid depths 1000..3000 mm map to 0..255 (1500 -> 63.75 -> 64); 0 (no return) stays black
    depth = np.array([[0, 1000, 1500, 3000]], dtype=np.uint16)
    assert image_to_rgb(_image_msg(depth, "16UC1"))[0, :, 0].tolist() == [0, 0, 64, 255]
    metres = np.array([[np.nan, 1.0, 1.5, 3.0, np.inf]], dtype=np.float32)
    out = image_to_rgb(_image_msg(metres, "32FC1", bigendian=True))
    assert out[0, :, 0].tolist() == [0, 0, 64, 255, 0]
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("bigendian", [False, True])
def test_images_match_rosbags_image(encoding, bigendian):
    arr = _random_image(encoding, 6, 9)
    plain = _image_msg(arr, encoding, bigendian=bigendian)
    padded = _image_msg(arr, encoding, pad=5, bigendian=bigendian)
    reference = message_to_cvimage(_rosbags_image(plain))
    np.testing.assert_array_equal(image_to_array(plain), reference)
    np.testing.assert_array_equal(image_to_array(padded), reference)
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        np.testing.assert_array_equal(image_to_rgb(padded), message_to_cvimage(_rosbags_image(plain), "rgb8"))
    elif encoding == "mono16":  # rosbags scales by 255/65535 (floor(v/257)), we shift (floor(v/256))
        ref = message_to_cvimage(_rosbags_image(plain), "rgb8").astype(int)
        diff = image_to_rgb(padded).astype(int) - ref
        assert diff.min() >= 0 and diff.max() <= 1


def test_malformed_images():
    truncated = _image_msg(_random_image("rgb8"), "rgb8", pad=2)  # 5 rows of 7*3 + 2 bytes
    truncated.data = bytes(truncated.data)[:-1]
    with pytest.raises(ConversionError, match=r"Image data has 114 bytes, expected step\*height = 115"):
        image_to_array(truncated)
    narrow = _image_msg(_random_image("rgb8"), "rgb8")
    narrow.step = 20
    with pytest.raises(ConversionError, match=r"step 20 is smaller than width\*bytes_per_pixel = 21"):
        image_to_rgb(narrow)
    nv12 = _image_msg(np.zeros((3, 4), np.uint8), "mono8")
    nv12.encoding = "nv12"
    with pytest.raises(ConversionError, match="unsupported image encoding 'nv12'"):
        image_to_rgb(nv12)
    odd = _image_msg(np.zeros((2, 5, 2), np.uint8), "uyvy")
    with pytest.raises(ConversionError, match="uyvy image has odd width 5"):
        image_to_rgb(odd)
    with pytest.raises(ConversionError, match="Image is empty"):
        image_to_array(Image(encoding="mono8"))
    with pytest.raises(ConversionError, match="HxWx3 needed"):
        array_to_image(np.zeros((4, 4), np.uint8), "bgr8")
    with pytest.raises(ConversionError, match="uint16 needed"):
        array_to_image(np.zeros((4, 4), np.int32), "mono16")
    with pytest.raises(ConversionError, match="cannot encode images as 'rgba8'"):
        array_to_image(np.zeros((4, 4, 4), np.uint8), "rgba8")
    assert issubclass(ConversionError, CmdrError)


def test_image_to_rgb_16bit_and_generic_worked_values():
    # 16-bit colour keeps the high byte like mono16; generic OpenCV types are OpenCV's layout (cv_bridge's
    # cvtColorForDisplay): 8UC3/16UC3 BGR, 8UC4/16UC4 BGRA, 8UC1 mono
    px16 = np.array([[[0x1020, 0x30FF, 0x5001, 0x7777]]], dtype=np.uint16)
    expect = {"rgb16": [0x10, 0x30, 0x50], "rgba16": [0x10, 0x30, 0x50], "bgr16": [0x50, 0x30, 0x10],
              "bgra16": [0x50, 0x30, 0x10], "16UC3": [0x50, 0x30, 0x10], "16UC4": [0x50, 0x30, 0x10]}
    px8 = np.array([[[10, 20, 30, 40]]], dtype=np.uint8)
    expect8 = {"8UC3": [30, 20, 10], "8UC4": [30, 20, 10]}
    for bigendian in (False, True):
        for encoding, rgb in [*expect.items(), *expect8.items()]:
            dtype, channels = ENCODINGS[encoding]
            px = (px16 if dtype is np.uint16 else px8)[..., :channels].copy()
            out = image_to_rgb(_image_msg(px, encoding, pad=3, bigendian=bigendian))
            assert out.dtype == np.uint8 and out.shape == (1, 1, 3)
            assert out[0, 0].tolist() == rgb, (encoding, bigendian)
    assert image_to_rgb(_image_msg(np.array([[77]], np.uint8), "8UC1"))[0, 0].tolist() == [77] * 3


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The Bayer mosaic a sensor with ``pattern`` (colours of the top-left 2x2 block, row by row) records."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(colour)]
    return out


def _bilinear_demosaic(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    """Textbook bilinear demosaic: each missing sample is the mean of its nearest recorded neighbours."""
    h, w = mosaic.shape
    kernels = {"g": np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]]) / 4,
                      "rb": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4}
    out = np.zeros((h, w, 3))
    for c, colour in enumerate("rgb"):
        recorded = np.zeros((h, w))
        for (dy, dx), col in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
            if col == colour:
                recorded[dy::2, dx::2] = 1
        kernel = kernels["g" if colour == "g" else "rb"]
        v = np.pad(mosaic * recorded, 1)
        out[..., c] = sum(kernel[i, j] * v[i:i + h, j:j + w] for i in range(3) for j in range(3))
    return out


@pytest.mark.parametrize("pattern", BAYER)
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_flat_patches_keep_their_colour(pattern, bits):
    # four large patches of distinct colours (R != B everywhere): a swapped or shifted pattern changes them
    colours = np.array([[[200, 40, 10], [20, 180, 60]], [[30, 50, 220], [120, 90, 160]]])
    rgb = np.repeat(np.repeat(colours, 12, axis=0), 16, axis=1)  # 24x32
    if bits == 16:
        rgb = rgb * 256 + 0x5A  # the high byte is the colour
    mosaic = _mosaic(rgb.astype(np.uint8 if bits == 8 else np.uint16), pattern)
    out = image_to_rgb(_image_msg(mosaic, f"bayer_{pattern}{bits}", pad=3, bigendian=bits == 16))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    for i in range(2):
        for j in range(2):
            interior = out[12 * i + 2: 12 * i + 10, 16 * j + 2: 16 * j + 14]
            assert (interior == colours[i, j]).all(), (pattern, i, j, interior[0, 0])


@pytest.mark.parametrize("pattern", BAYER)
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_matches_numpy_bilinear_demosaic(pattern, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    rgb = RNG.integers(0, 2**bits, (20, 30, 3)).astype(dtype)
    mosaic = _mosaic(rgb, pattern)
    out = image_to_rgb(_image_msg(mosaic, f"bayer_{pattern}{bits}", pad=5)).astype(int)
    ref = np.round(_bilinear_demosaic(mosaic.astype(float), pattern)).astype(int) >> (bits - 8)
    assert np.abs(out - ref)[1:-1, 1:-1].max() <= 1  # OpenCV's rounding; the 1-pixel border is its own
    recorded = out[2:-1:2, 2:-1:2, "rgb".index(pattern[0])]  # the top-left colour of each block, as recorded
    assert (recorded == mosaic[2:-1:2, 2:-1:2] >> (bits - 8)).all()


def _yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """HxWx2 YUV 4:2:2 bytes of ``rgb`` (pixel pairs of one colour): BT.601 video range, ``order`` 'UYVY' or 'YUYV'."""
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    planes = {"Y": 16 + 65.481 * r + 128.553 * g + 24.966 * b,
              "U": 128 - 37.797 * r - 74.203 * g + 112.0 * b,
              "V": 128 + 112.0 * r - 93.786 * g - 18.214 * b}
    planes = {k: np.round(v).astype(np.uint8) for k, v in planes.items()}
    h, w = rgb.shape[:2]
    out = np.empty((h, w * 2), np.uint8)
    y_slot = 0
    for slot, name in enumerate(order):
        if name == "Y":
            out[:, slot::4] = planes["Y"][:, y_slot::2]
            y_slot += 1
        else:
            out[:, slot::4] = planes[name][:, 0::2]
    return out.reshape(h, w, 2)


@pytest.mark.parametrize("encoding,order", [("uyvy", "UYVY"), ("yuv422", "UYVY"), ("yuyv", "YUYV"),
                                            ("yuv422_yuy2", "YUYV")])
def test_yuv422_matches_bt601(encoding, order):
    rgb = np.repeat(RNG.integers(0, 256, (6, 5, 3)), 2, axis=1).astype(np.uint8)  # chroma shared by pixel pairs
    out = image_to_rgb(_image_msg(_yuv422(rgb, order), encoding, pad=3))
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 2  # integer Y, U, V
    other = "YUYV" if order == "UYVY" else "UYVY"
    assert np.abs(image_to_rgb(_image_msg(_yuv422(rgb, other), encoding)).astype(int) - rgb).max() > 50


# ----------------------------------------------------------------------------------------- point clouds
NP_OF = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
         PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def _cloud_msg(layout, values, point_step, row_pad=0, bigendian=False) -> PointCloud2:
    """A PointCloud2 written byte slice by byte slice; ``layout``: [(name, offset, datatype, count)].

    ``values[name]`` has shape (H, W) or (H, W, count); all bytes not covered by a field are 0xCD.
    """
    height, width = next(iter(values.values())).shape[:2]
    row_step = width * point_step + row_pad
    buf = np.full((height, row_step), 0xCD, dtype=np.uint8)
    points = buf[:, : width * point_step].reshape(height, width, point_step)
    order = ">" if bigendian else "<"
    for name, offset, datatype, count in layout:
        vals = values[name].astype(order + NP_OF[datatype])
        raw = np.ascontiguousarray(vals).view(np.uint8).reshape(height, width, -1)
        points[:, :, offset: offset + raw.shape[2]] = raw
    msg = PointCloud2(height=height, width=width, is_bigendian=bigendian, point_step=point_step,
                      row_step=row_step, is_dense=False)
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in layout]
    msg.data = buf.tobytes()
    return msg


def _organized_expected(x, y, z):
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    xyz[~np.isfinite(xyz).all(-1)] = 0
    return xyz


# shuffled order, float64 x/y, a count-3 field, a packed colour, 8 bytes of padding per point
SHUFFLED = [("intensity", 0, PointField.FLOAT32, 1), ("z", 4, PointField.FLOAT32, 1),
            ("normal", 8, PointField.FLOAT32, 3), ("rgb", 20, PointField.UINT32, 1),
            ("x", 24, PointField.FLOAT64, 1), ("y", 32, PointField.FLOAT64, 1)]


def _shuffled_values(height, width):
    vals = {
        "intensity": RNG.uniform(0, 1, (height, width)), "z": RNG.uniform(0.3, 2, (height, width)),
        "normal": RNG.normal(size=(height, width, 3)), "x": RNG.normal(size=(height, width)),
        "y": RNG.normal(size=(height, width)),
        "rgb": RNG.integers(0, 2**32, (height, width), dtype=np.uint64),
    }
    vals["x"][0, 1] = np.nan
    vals["z"][-1, 2] = np.inf
    vals["y"][-1, -1] = -np.nan
    vals["rgb"][0, 0] = 0xFF102030  # a=0xFF r=0x10 g=0x20 b=0x30
    return vals


@pytest.mark.parametrize("bigendian", [False, True])
def test_organized_cloud_shuffled_fields_matches_pointcloud2(bigendian):
    vals = _shuffled_values(3, 4)
    msg = _cloud_msg(SHUFFLED, vals, point_step=48, row_pad=5, bigendian=bigendian)
    fields = pointcloud2_fields(msg, ["x", "normal", "rgb", "intensity"])
    ref = read_points(msg, reshape_organized_cloud=True)
    np.testing.assert_array_equal(fields["x"], vals["x"])
    np.testing.assert_array_equal(fields["x"], ref["x"])
    assert fields["normal"].shape == (3, 4, 3) and fields["normal"].dtype == np.float32
    np.testing.assert_array_equal(fields["normal"], vals["normal"].astype(np.float32))
    np.testing.assert_array_equal(fields["normal"][..., 2], ref["normal_2"])
    np.testing.assert_array_equal(fields["rgb"], ref["rgb"])
    np.testing.assert_array_equal(fields["intensity"], ref["intensity"])

    xyz, organized = pointcloud2_to_xyz(msg)
    assert organized and xyz.shape == (3, 4, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz, _organized_expected(vals["x"], vals["y"], vals["z"]))
    np.testing.assert_array_equal(xyz, _organized_expected(ref["x"], ref["y"], ref["z"]))
    assert (xyz[0, 1] == 0).all() and (xyz[-1, 2] == 0).all() and (xyz[-1, -1] == 0).all()
    assert (xyz != 0).all(-1).sum() == 12 - 3



def test_unorganized_cloud_drops_non_finite_points():
    vals = {k: v.reshape(1, -1, *v.shape[2:]) for k, v in _shuffled_values(3, 4).items()}
    msg = _cloud_msg(SHUFFLED, vals, point_step=48, row_pad=3, bigendian=True)
    xyz, organized = pointcloud2_to_xyz(msg)
    ref = read_points(msg, ["x", "y", "z"], skip_nans=True)  # drops the NaN points, not the inf one
    assert not organized and xyz.shape == (9, 3)
    assert len(ref) == 10
    keep = np.isfinite(ref["z"])
    np.testing.assert_array_equal(xyz, np.stack([ref["x"], ref["y"], ref["z"]], -1)[keep].astype(np.float32))


@pytest.mark.parametrize("bigendian", [False, True])
def test_every_point_field_datatype(bigendian):
    layout, values, offset = [], {}, 1  # offset 1: every field is unaligned
    for datatype, code in NP_OF.items():
        name = f"f_{code}"
        dtype = np.dtype(code)
        if dtype.kind == "f":
            values[name] = RNG.normal(size=(2, 5)) * 1e3
        else:
            info = np.iinfo(dtype)
            values[name] = RNG.integers(info.min, info.max, (2, 5), endpoint=True, dtype=np.int64)
        values[name][0, 0] = np.iinfo(dtype).max if dtype.kind != "f" else -0.5
        layout.append((name, offset, datatype, 1))
        offset += dtype.itemsize
    msg = _cloud_msg(layout, values, point_step=offset + 2, row_pad=1, bigendian=bigendian)
    fields = pointcloud2_fields(msg, list(values))
    ref = read_points(msg, reshape_organized_cloud=True)
    for name, code in ((n, n[2:]) for n in values):
        assert fields[name].dtype == np.dtype(code) and fields[name].shape == (2, 5)
        np.testing.assert_array_equal(fields[name], values[name].astype(code))
        np.testing.assert_array_equal(fields[name], ref[name])


@pytest.mark.parametrize("with_intensity", [False, True])
def test_xyz_to_pointcloud2_round_trip(with_intensity):
    xyz = RNG.normal(size=(4, 6, 3)).astype(np.float32)
    xyz[1, 2] = np.nan
    intensity = RNG.uniform(size=(4, 6)).astype(np.float32) if with_intensity else None
    msg = xyz_to_pointcloud2(xyz, Header(frame_id="cam"), intensity)
    names = ["x", "y", "z"] + (["intensity"] if with_intensity else [])
    assert [f.name for f in msg.fields] == names
    assert [f.offset for f in msg.fields] == [0, 4, 8, 12][: len(names)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (4, 6, 4 * len(names), 24 * len(names))
    assert not msg.is_bigendian and not msg.is_dense and msg.header.frame_id == "cam"
    ref = read_points(msg, reshape_organized_cloud=True)
    np.testing.assert_array_equal(ref["y"], xyz[..., 1])
    if with_intensity:
        np.testing.assert_array_equal(pointcloud2_fields(msg, ["intensity"])["intensity"], intensity)
    out, organized = pointcloud2_to_xyz(msg)
    expected = xyz.copy()
    expected[1, 2] = 0
    assert organized
    np.testing.assert_array_equal(out, expected)

    flat, organized = pointcloud2_to_xyz(xyz_to_pointcloud2(xyz.reshape(-1, 3)))
    assert not organized
    np.testing.assert_array_equal(flat, np.delete(xyz.reshape(-1, 3), 1 * 6 + 2, axis=0))


def test_malformed_clouds():
    vals = {"x": np.zeros((2, 3)), "y": np.zeros((2, 3)), "z": np.zeros((2, 3))}
    xyz_layout = [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1)]
    msg = _cloud_msg(xyz_layout, vals, point_step=12)
    msg.data = bytes(msg.data)[:-4]
    with pytest.raises(ConversionError, match=r"PointCloud2 data has 68 bytes, expected row_step\*height = 72"):
        pointcloud2_to_xyz(msg)
    no_z = _cloud_msg(xyz_layout[:2], vals, point_step=12)
    with pytest.raises(ConversionError, match="PointCloud2 has no 'z' field"):
        pointcloud2_to_xyz(no_z)
    short_row = _cloud_msg(xyz_layout, vals, point_step=12)
    short_row.row_step = 30
    with pytest.raises(ConversionError, match=r"row_step 30 is smaller than width\*point_step = 36"):
        pointcloud2_to_xyz(short_row)
    overflow = _cloud_msg(xyz_layout, vals, point_step=12)
    overflow.fields[2].datatype = PointField.FLOAT64
    with pytest.raises(ConversionError, match="'z' ends at byte 16, beyond point_step 12"):
        pointcloud2_to_xyz(overflow)
    int_xyz = _cloud_msg([(n, o, PointField.INT32, 1) for n, o, _, _ in xyz_layout], vals, point_step=12)
    with pytest.raises(ConversionError, match="'x' is INT32"):
        pointcloud2_to_xyz(int_xyz)
    with pytest.raises(ConversionError, match=r"not \(N,3\) or \(H,W,3\)"):
        xyz_to_pointcloud2(np.zeros((5, 2)))
    with pytest.raises(ConversionError, match="intensity of shape"):
        xyz_to_pointcloud2(np.zeros((5, 3)), intensity=np.zeros(4))


@pytest.mark.parametrize("name", ["table_scene_mug_stereo_textured.pcd", "milk_cartoon_all_small_clorox.pcd"])
@pytest.mark.parametrize("point_step", [16, 32])
def test_real_pcl_organized_cloud(pcl_organized_dir, name, point_step):
    o3d = pytest.importorskip("open3d")
    pcd = o3d.t.io.read_point_cloud(str(pcl_organized_dir / name), remove_nan_points=False,
                                    remove_infinite_points=False)
    positions = pcd.point.positions.numpy().reshape(480, 640, 3)
    colors = pcd.point.colors.numpy().reshape(480, 640, 3)
    # as a ROS driver publishes pcl::PointXYZRGB: rgb packed into float32 bits,
    # at byte 12 (tight 16-byte points) or 16 (PCL's own 32-byte layout)
    packed = (colors[..., 0].astype(np.uint32) << 16) | (colors[..., 1].astype(np.uint32) << 8) | colors[..., 2]
    rgb_offset = 12 if point_step == 16 else 16
    layout = [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
              ("rgb", rgb_offset, PointField.FLOAT32, 1)]
    values = {"x": positions[..., 0], "y": positions[..., 1], "z": positions[..., 2], "rgb": packed.view(np.float32)}
    msg = _cloud_msg(layout, values, point_step=point_step)
    nan_points = np.isnan(positions).any(-1)
    assert 0.1 < nan_points.mean() < 0.5  # the captures really have holes

    start = time.perf_counter()
    xyz, organized = pointcloud2_to_xyz(msg)
    packed_rgb = pointcloud2_fields(msg, ["rgb"])["rgb"].view(np.uint32)  # PCL: float32 bits of a<<24|r<<16|g<<8|b
    elapsed = time.perf_counter() - start
    print(f"{name} point_step={point_step}: xyz+rgb conversion {elapsed * 1e3:.1f} ms")
    rgb = (np.stack([packed_rgb >> 16, packed_rgb >> 8, packed_rgb], axis=-1) & 0xFF).astype(np.uint8)
    assert elapsed < 1.0  # vectorised: a few ms; a per-point loop would take seconds

    assert organized and xyz.shape == (480, 640, 3) and xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz[~nan_points], positions[~nan_points])
    assert (xyz[nan_points] == 0).all()
    np.testing.assert_array_equal(rgb, colors)
    ref = read_points(msg, ["x", "rgb"], reshape_organized_cloud=True)
    np.testing.assert_array_equal(xyz[..., 0][~nan_points], ref["x"][~nan_points])
    np.testing.assert_array_equal(rgb[..., 0], (ref["rgb"].view(np.uint32) >> 16) & 0xFF)


# ------------------------------------------------------------------------------------------- CameraInfo
def _camera_dict():
    return {
        "width": 640, "height": 480, "distortion_model": "plumb_bob",
        "d": np.array([-0.28, 0.07, 0.001, -0.0005, 0.0]),
        "k": np.array([[525.0, 0, 319.5], [0, 524.0, 239.5], [0, 0, 1]]),
        "r": np.eye(3),
        "p": np.array([[525.0, 0, 319.5, 0], [0, 524.0, 239.5, 0], [0, 0, 1, 0]]),
    }


def test_camera_info_round_trip():
    cam = _camera_dict()
    msg = dict_to_camera_info(cam, Header(frame_id="optical"))
    assert msg.k[2] == 319.5 and msg.p[6] == 239.5 and msg.header.frame_id == "optical"
    out = camera_info_to_dict(msg)
    assert (out["width"], out["height"], out["distortion_model"]) == (640, 480, "plumb_bob")
    for key in ("d", "k", "r", "p"):
        np.testing.assert_array_equal(out[key], cam[key])
    assert out["k"].shape == (3, 3) and out["p"].shape == (3, 4)
    flat = dict(cam, k=cam["k"].ravel().tolist())  # flat lists are accepted too
    np.testing.assert_array_equal(camera_info_to_dict(dict_to_camera_info(flat))["k"], cam["k"])


def test_malformed_camera_info():
    with pytest.raises(ConversionError, match="CameraInfo k has 8 values, expected 9"):
        dict_to_camera_info(dict(_camera_dict(), k=np.zeros(8)))
    with pytest.raises(ConversionError, match="CameraInfo p has 9 values, expected 12"):
        dict_to_camera_info(dict(_camera_dict(), p=np.eye(3)))
    with pytest.raises(ConversionError, match="uncalibrated"):
        camera_info_to_dict(CameraInfo(width=640, height=480))


# ----------------------------------------------------------------------------------------- compressed images
def _pil_bytes(arr: np.ndarray, codec: str, **kwargs) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(arr).save(out, codec, **kwargs)
    return out.getvalue()


def _png16_colour(arr: np.ndarray) -> bytes:
    """A 16-bit RGB(A) PNG written by hand (PIL cannot write 48/64-bit colour): filter 0 rows, big-endian samples."""
    h, w, channels = arr.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _compressed(fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4, y * 5, 255 - x * 3], -1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["rgb8; png compressed bgr8", "bgr8; png compressed bgr8", "png",
                                 "yuv422; png compressed bgr8", "rgb8; tiff compressed bgr8"])
def test_compressed_colour_lossless(fmt):
    # image_transport converts colour to bgr8 before cv::imencode, so the file holds true RGB (PIL's view)
    rgb = RNG.integers(0, 256, (9, 13, 3)).astype(np.uint8)
    codec = "TIFF" if "tiff" in fmt else "PNG"
    out = compressed_image_to_rgb(_compressed(fmt, _pil_bytes(rgb, codec)))
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out, rgb)


def test_compressed_alpha_mono_and_16bit():
    rgba = RNG.integers(0, 256, (5, 6, 4)).astype(np.uint8)
    for fmt in ("bgra8; png compressed bgr8", "rgba8; png compressed bgr8", "png"):
        np.testing.assert_array_equal(compressed_image_to_rgb(_compressed(fmt, _pil_bytes(rgba, "PNG"))), rgba[..., :3])
    grey = RNG.integers(0, 256, (5, 6)).astype(np.uint8)
    for fmt in ("mono8; png compressed ", "8UC1; png compressed ", "png"):
        out = compressed_image_to_rgb(_compressed(fmt, _pil_bytes(grey, "PNG")))
        np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    rgb16 = RNG.integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    out = compressed_image_to_rgb(_compressed("rgb16; png compressed bgr16", _png16_colour(rgb16)))
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))
    mono16 = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    out = compressed_image_to_rgb(_compressed("mono16; png compressed ", _pil_bytes(mono16, "PNG")))
    np.testing.assert_array_equal(out[..., 1], (mono16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", "jpeg", "jpg"])
def test_compressed_jpeg_matches_pil(fmt):
    rgb = _smooth_rgb()
    data = _pil_bytes(rgb, "JPEG", quality=95)
    out = compressed_image_to_rgb(_compressed(fmt, data))
    pil = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pil).max() <= 2  # two libjpeg builds
    assert np.abs(out.astype(int) - rgb).mean() < 2
    assert np.abs(out[..., 0].astype(int) - rgb[..., 2]).mean() > 50  # not swapped


def test_compressed_ros1_rgb_colour_space():
    # ROS 1 compressed_image_transport with color_space=rgb: cv::imencode got RGB as if it were BGR
    rgb = RNG.integers(0, 256, (4, 6, 3)).astype(np.uint8)
    data = _pil_bytes(np.ascontiguousarray(rgb[..., ::-1]), "PNG")
    np.testing.assert_array_equal(compressed_image_to_rgb(_compressed("rgb8; png compressed rgb8", data)), rgb)


def test_compressed_non_colour_keeps_its_encoding():
    # Bayer, depth: image_transport compresses the raw pixels; the decoded payload is the original encoding
    rgb = RNG.integers(0, 256, (8, 10, 3)).astype(np.uint8)
    mosaic = _mosaic(rgb, "grbg")
    out = compressed_image_to_rgb(_compressed("bayer_grbg8; png compressed ", _pil_bytes(mosaic, "PNG")))
    np.testing.assert_array_equal(out, image_to_rgb(_image_msg(mosaic, "bayer_grbg8")))
    depth = RNG.integers(0, 3000, (6, 7)).astype(np.uint16)
    depth[0, 0] = 0
    packed = _compressed("16UC1; png compressed ", _pil_bytes(depth, "PNG"))
    np.testing.assert_array_equal(compressed_image_to_rgb(packed), image_to_rgb(_image_msg(depth, "16UC1")))
    np.testing.assert_array_equal(depth_image_to_metres(packed), (depth * 0.001).astype(np.float32))


def test_compressed_depth_16uc1():
    depth = RNG.integers(1, 5000, (6, 7)).astype(np.uint16)
    depth[2, 3] = 0
    header = struct.pack("<iff", 0, 1.5, -2.5)  # the quantization parameters are unused for 16UC1
    for fmt in ("16UC1; compressedDepth png", "16UC1; compressedDepth"):
        msg = _compressed(fmt, header + _pil_bytes(depth, "PNG"))
        z = depth_image_to_metres(msg)
        np.testing.assert_array_equal(z, (depth * 0.001).astype(np.float32))
        assert z[2, 3] == 0
        np.testing.assert_array_equal(compressed_image_to_rgb(msg), image_to_rgb(_image_msg(depth, "16UC1")))


def test_compressed_depth_32fc1_inverse_depth():
    # encode as compressed_depth_image_transport does, with its defaults depth_quantization=100, depth_max=10
    z0, z_max = np.float32(100), np.float32(10)
    a = z0 * (z0 + np.float32(1))
    b = np.float32(1) - a / z_max
    depth = RNG.uniform(0.3, 12.0, (6, 7)).astype(np.float32)
    depth[0, 0] = np.nan
    with np.errstate(invalid="ignore"):
        q = np.where(depth < z_max, a / depth + b, 0).astype(np.uint16)  # NaN and beyond depth_max -> 0
    msg = _compressed("32FC1; compressedDepth png", struct.pack("<iff", 0, a, b) + _pil_bytes(q, "PNG"))
    z = depth_image_to_metres(msg)
    ok = q > 0
    np.testing.assert_array_equal(z[ok], a / (q[ok].astype(np.float32) - b))
    assert (z[~ok] == 0).all() and ok.sum() < depth.size - 1
    assert np.abs(z[ok] - depth[ok]).max() < 0.01 * depth[ok].max() ** 2  # inverse-depth quantization


def test_malformed_compressed_images():
    png = _pil_bytes(RNG.integers(0, 256, (4, 4, 3)).astype(np.uint8), "PNG")
    jpeg = _pil_bytes(_smooth_rgb(), "JPEG")
    with pytest.raises(ConversionError, match=r"payload of 300 bytes cannot be decoded as 'jpeg' \(corrupt"):
        compressed_image_to_rgb(_compressed("jpeg", RNG.integers(0, 256, 300).astype(np.uint8).tobytes()))
    with pytest.raises(ConversionError, match="JPEG of 500 bytes without its end marker: truncated"):
        compressed_image_to_rgb(_compressed("rgb8; jpeg compressed bgr8", jpeg[:500]))
    broken = bytearray(jpeg)
    broken[2:60] = b"\x00" * 58  # headers wiped
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        compressed_image_to_rgb(_compressed("jpeg", bytes(broken)))
    with pytest.raises(ConversionError, match="cannot be decoded as 'png'"):
        compressed_image_to_rgb(_compressed("png", png[: len(png) // 2]))
    with pytest.raises(ConversionError, match="payload of 0 bytes"):
        compressed_image_to_rgb(_compressed("png", b""))
    for fmt in ("h264", "bgr8; theora compressed bgr8", "bgr8; jpeg", ""):
        with pytest.raises(ConversionError, match=f"unsupported CompressedImage format '{fmt}'"):
            compressed_image_to_rgb(_compressed(fmt, png))
    with pytest.raises(ConversionError, match="unsupported image encoding 'foo8'"):
        compressed_image_to_rgb(_compressed("foo8; png compressed ", png))
    with pytest.raises(ConversionError, match=r"decodes to \(4, 4, 3\) uint8, mono16 has 1 channel\(s\) of uint16"):
        compressed_image_to_rgb(_compressed("mono16; png compressed ", png))
    with pytest.raises(ConversionError, match="reports a 0x0 image: malformed"):
        depth_image_to_metres(_compressed("16UC1; compressedDepth rvl", b"\0" * 40))
    with pytest.raises(ConversionError, match="unsupported compressedDepth format 'mono8; compressedDepth png'"):
        depth_image_to_metres(_compressed("mono8; compressedDepth png", b"\0" * 40))
    with pytest.raises(ConversionError, match="payload has 12 bytes, not even its 12-byte header and an image"):
        depth_image_to_metres(_compressed("16UC1; compressedDepth png", b"\0" * 12))
    with pytest.raises(ConversionError, match=r"compressedDepth png' decodes to \(4, 4, 3\) uint8"):
        depth_image_to_metres(_compressed("16UC1; compressedDepth png", b"\0" * 12 + png))
    with pytest.raises(ConversionError, match="'bgr8' is not a depth image"):
        depth_image_to_metres(_compressed("png", png))


# ----------------------------------------------------------------------------------------------- depth images
def _depth_camera(width=64, height=48, k=(500.0, 520.0, 31.5, 23.5), p=None):
    fx, fy, cx, cy = k
    cam = {"width": width, "height": height, "distortion_model": "plumb_bob", "d": np.zeros(5),
           "k": np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), "r": np.eye(3),
           "p": np.hstack([np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), np.zeros((3, 1))]) if p is None else p}
    return dict_to_camera_info(cam)


def test_depth_16uc1_fronto_parallel_plane():
    depth = np.full((48, 64), 800, np.uint16)  # 0.8 m
    depth[5, 7] = 0  # no return
    xyz = depth_image_to_xyz(_image_msg(depth, "16UC1", pad=2, bigendian=True), _depth_camera())
    assert xyz.shape == (48, 64, 3) and xyz.dtype == np.float32
    v, u = 10, 40
    np.testing.assert_allclose(xyz[v, u], [(u - 31.5) * 0.8 / 500, (v - 23.5) * 0.8 / 520, 0.8], rtol=1e-6)
    np.testing.assert_allclose(xyz[..., 2][depth > 0], 0.8, rtol=1e-7)
    assert (xyz[5, 7] == 0).all()
    # x grows with u, y with v (optical frame: x right, y down), symmetric about the principal point
    np.testing.assert_allclose(xyz[0, 0, :2], [-31.5 * 0.8 / 500, -23.5 * 0.8 / 520], rtol=1e-6)
    np.testing.assert_allclose(xyz[47, 63, :2], [31.5 * 0.8 / 500, 23.5 * 0.8 / 520], rtol=1e-6)


def test_depth_32fc1_tilted_plane_lies_on_the_plane():
    # ray-cast a known plane n . p = d, back-project: every valid point must satisfy the plane equation
    fx, fy, cx, cy = 450.0, 460.0, 30.0, 20.0
    n, d = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0]), 0.9
    v, u = np.mgrid[0:48, 0:64]
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones(u.shape)], -1)
    depth = (d / (rays @ n)).astype(np.float32)
    depth[3, 4], depth[4, 5], depth[6, 7], depth[8, 9] = np.nan, np.inf, -1.0, 0.0
    xyz = depth_image_to_xyz(_image_msg(depth, "32FC1"), _depth_camera(k=(fx, fy, cx, cy)))
    invalid = ~(np.isfinite(depth) & (depth > 0))
    assert invalid.sum() == 4 and (xyz[invalid] == 0).all()
    np.testing.assert_allclose(xyz[~invalid] @ n, d, rtol=1e-5)
    np.testing.assert_allclose(xyz[..., 2][~invalid], depth[~invalid])
    np.testing.assert_array_equal(depth_image_to_metres(_image_msg(depth, "32FC1"))[invalid], 0)


def test_depth_rectified_uses_p_and_compressed_input():
    p = np.array([[400.0, 0, 20.0, 0], [0, 410.0, 10.0, 0], [0, 0, 1, 0]])
    info = _depth_camera(p=p)
    depth = np.full((48, 64), 1000, np.uint16)
    raw = _image_msg(depth, "16UC1")
    with_k, with_p = depth_image_to_xyz(raw, info), depth_image_to_xyz(raw, info, rectified=True)
    np.testing.assert_allclose(with_k[4, 50], [(50 - 31.5) / 500, (4 - 23.5) / 520, 1.0], rtol=1e-6)
    np.testing.assert_allclose(with_p[4, 50], [(50 - 20.0) / 400, (4 - 10.0) / 410, 1.0], rtol=1e-6)
    packed = _compressed("16UC1; compressedDepth png", b"\0" * 12 + _pil_bytes(depth, "PNG"))
    np.testing.assert_array_equal(depth_image_to_xyz(packed, info), with_k)


def test_malformed_depth_inputs():
    depth = _image_msg(np.full((48, 64), 500, np.uint16), "16UC1")
    with pytest.raises(ConversionError, match="fx=0, fy=520: the camera is uncalibrated"):
        depth_image_to_xyz(depth, _depth_camera(k=(0.0, 520.0, 31.5, 23.5)))
    with pytest.raises(ConversionError, match=r"CameraInfo k has fx=inf, fy=520 and must be finite"):
        depth_image_to_xyz(depth, _depth_camera(k=(np.inf, 520.0, 31.5, 23.5)))
    with pytest.raises(ConversionError, match=r"CameraInfo k has fx=500, fy=520 and must be finite"):
        depth_image_to_xyz(depth, _depth_camera(k=(500.0, 520.0, np.nan, 23.5)))
    with pytest.raises(ConversionError, match="CameraInfo p has fx=0, fy=0"):
        depth_image_to_xyz(depth, _depth_camera(p=np.zeros((3, 4))), rectified=True)
    with pytest.raises(ConversionError, match="depth image is 64x48 but camera_info is 640x480"):
        depth_image_to_xyz(depth, _depth_camera(width=640, height=480))
    with pytest.raises(ConversionError, match="'mono16' is not a depth image"):
        depth_image_to_xyz(_image_msg(np.zeros((48, 64), np.uint16), "mono16"), _depth_camera())
    truncated = _image_msg(np.zeros((48, 64), np.uint16), "16UC1")
    truncated.data = bytes(truncated.data)[:-2]
    with pytest.raises(ConversionError, match=r"Image data has 6142 bytes, expected step\*height = 6144"):
        depth_image_to_xyz(truncated, _depth_camera())

