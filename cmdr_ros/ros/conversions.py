"""ROS message <-> NumPy conversions for the inspection node (Image, CompressedImage, PointCloud2, CameraInfo).

Every decoder validates the message layout first (sizes, steps, offsets, field types) and raises
``ConversionError`` with a one-line reason, so a misconfigured driver is reported instead of being
turned into garbage. Decoding is vectorised: a strided ``np.ndarray`` view over the message buffer
(structured dtype for point clouds, ``itemsize = point_step``) and one copy into native byte order.
Results never alias the message buffer.

These own decoders are used even where cv_bridge / sensor_msgs_py are installed:
cv_bridge's Python ``imgmsg_to_cv2`` derives the row stride as ``step // pixel_size`` (wrong when the
row padding is not a multiple of the pixel size) and its byte swap calls ``ndarray.newbyteorder``,
removed in NumPy 2 (vision_opencv PR #556); sensor_msgs_py's ``read_points_numpy`` requires all fields
to share one datatype (xyz FLOAT32 with a packed ``rgb`` UINT32 does not) and flattens organized
clouds. One tested code path serves both environments. Where cv_bridge and image_transport define what an
encoding or a CompressedImage format means (Bayer pattern codes, YUV byte order, generic OpenCV types,
``"rgb8; jpeg compressed bgr8"``), these decoders follow them; the OpenCV calls are the ones they make.
"""
from __future__ import annotations

import array
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cmdr_ros import CmdrError

__all__ = [
    "ConversionError",
    "stamp_ns",
    "make_header",
    "image_to_rgb",
    "image_to_array",
    "compressed_image_to_rgb",
    "depth_image_to_metres",
    "depth_image_to_xyz",
    "array_to_image",
    "pointcloud2_fields",
    "pointcloud2_to_xyz",
    "pointcloud2_rgb",
    "xyz_to_pointcloud2",
    "camera_info_to_dict",
    "dict_to_camera_info",
]


class ConversionError(CmdrError):
    """A ROS message (or array to be published) whose layout or content cannot be converted."""


NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time, or a message header holding one, in integer nanoseconds."""
    stamp = getattr(stamp, "stamp", stamp)
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def make_header(stamp: int, frame_id: str) -> Header:
    """A std_msgs/Header at ``stamp`` nanoseconds."""
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = stamp // NS_PER_S, stamp % NS_PER_S
    return h


# ROS Bayer pattern -> OpenCV code, as cv_bridge's getConversionCodes maps BAYER_RGGB etc. to RGB. OpenCV names
# a pattern by the two pixels at row 1, columns 1-2, so ROS rggb is OpenCV "BG" (alias COLOR_BayerRGGB2RGB).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
# YUV 4:2:2, 2 bytes per pixel: yuv422 is the old name of uyvy (U Y0 V Y1), yuv422_yuy2 of yuyv (Y0 U Y1 V).
_YUV422_TO_RGB = {
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
}
_CV_TO_RGB = {f"bayer_{p}{bits}": code for p, code in _BAYER_TO_RGB.items() for bits in (8, 16)} | _YUV422_TO_RGB

# Channels holding R, G, B. The generic OpenCV types are read in OpenCV's layout, as cv_bridge's
# cvtColorForDisplay reads them: 8UC1 mono, 8UC3/16UC3 BGR, 8UC4/16UC4 BGRA. (cv_bridge's cvtColor refuses
# them, "not a color format"; cv_bridge's cv2_to_imgmsg(image) with its default "passthrough" publishes them.)
_RGB, _BGR, _GREY = (0, 1, 2), (2, 1, 0), (0, 0, 0)
_RGB_CHANNELS: dict[str, tuple[int, int, int]] = {
    "rgb8": _RGB, "rgba8": _RGB, "rgb16": _RGB, "rgba16": _RGB,
    "bgr8": _BGR, "bgra8": _BGR, "bgr16": _BGR, "bgra16": _BGR,
    "8UC3": _BGR, "8UC4": _BGR, "16UC3": _BGR, "16UC4": _BGR,
    "mono8": _GREY, "mono16": _GREY, "8UC1": _GREY,
}

# encoding -> (little-endian base dtype, channels). 16UC1 depth is in mm, 32FC1 depth in m (REP 118).
_DECODABLE: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "rgb16": ("<u2", 3), "bgr16": ("<u2", 3), "rgba16": ("<u2", 4), "bgra16": ("<u2", 4),
    "mono8": ("u1", 1), "mono16": ("<u2", 1),
    "8UC1": ("u1", 1), "8UC3": ("u1", 3), "8UC4": ("u1", 4), "16UC3": ("<u2", 3), "16UC4": ("<u2", 4),
    **{f"bayer_{p}8": ("u1", 1) for p in _BAYER_TO_RGB},
    **{f"bayer_{p}16": ("<u2", 1) for p in _BAYER_TO_RGB},
    **{enc: ("u1", 2) for enc in _YUV422_TO_RGB},
    "16UC1": ("<u2", 1),
    "32FC1": ("<f4", 1),
}
_ENCODABLE = ("rgb8", "bgr8", "mono8", "mono16", "32FC1")

# PointField datatype -> little-endian NumPy type (sensor_msgs/PointField constants INT8..FLOAT64).
_FIELD_TYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "<i2",
    PointField.UINT16: "<u2",
    PointField.INT32: "<i4",
    PointField.UINT32: "<u4",
    PointField.FLOAT32: "<f4",
    PointField.FLOAT64: "<f8",
}
_FIELD_TYPE_NAMES = {v: k for k, v in vars(PointField).items() if k.isupper() and isinstance(v, int)}


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` (array.array, bytes, memoryview, ndarray or list) as a flat uint8 array."""
    if isinstance(data, (bytes, bytearray, memoryview, array.array, np.ndarray)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def _sized_buffer(data: Any, expected: int, what: str, formula: str) -> np.ndarray:
    """The message payload as uint8, or a ConversionError when its length is not ``expected`` bytes."""
    buf = _buffer(data)
    if buf.size != expected:
        raise ConversionError(f"{what} has {buf.size} bytes, expected {formula} = {expected}")
    return buf


def _payload(arr: np.ndarray) -> array.array:
    """Bytes of a C-contiguous array as the ``array('B')`` that rclpy stores (a memcpy, no per-byte check)."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).tobytes())
    return out


def _with_order(base: str, bigendian: bool) -> np.dtype:
    return np.dtype(base).newbyteorder(">" if bigendian else "<")


# --------------------------------------------------------------------------------------------- images
def image_to_array(msg: Image) -> np.ndarray:
    """Raw pixels of a sensor_msgs/Image: HxWxC (colour) or HxW (mono, Bayer mosaic, depth) in the native dtype.

    uint8 for 8-bit encodings, uint16 for 16-bit ones (16UC1: depth in mm), float32 for 32FC1 (depth in m);
    channel order as in the encoding; YUV 4:2:2 as HxWx2 bytes. Honours ``step`` and ``is_bigendian``.
    """
    if msg.encoding not in _DECODABLE:
        raise ConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(_DECODABLE)})"
        )
    base, channels = _DECODABLE[msg.encoding]
    dtype = _with_order(base, bool(msg.is_bigendian))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ConversionError(f"Image is empty (width={width}, height={height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(
            f"Image step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({msg.encoding})"
        )
    buf = _sized_buffer(msg.data, step * height, "Image data", "step*height")
    view = np.ndarray(
        shape=(height, width, channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, channels * dtype.itemsize, dtype.itemsize),
    )
    out = view.astype(dtype.newbyteorder("="), order="C")
    return out[..., 0] if channels == 1 else out


def _depth_to_grey(depth: np.ndarray) -> np.ndarray:
    """Min-max stretch of the valid (finite, > 0) depths to 0..255; invalid pixels are 0. Display only."""
    depth = depth.astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    grey = np.zeros(depth.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = depth[valid].min(), depth[valid].max()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey[valid] = np.round((depth[valid] - lo) * scale).astype(np.uint8)
    return grey


def image_to_rgb(msg: Image) -> np.ndarray:
    """A sensor_msgs/Image as uint8 HxWx3 RGB, for the 2D branch and for display.

    Colour encodings are reordered (alpha dropped); mono is replicated to 3 channels; Bayer mosaics are
    demosaiced (OpenCV bilinear) and YUV 4:2:2 converted (BT.601) with cv_bridge's OpenCV codes. 16-bit
    data keeps its high byte (``>> 8``). 16UC1/32FC1 depth images are min-max stretched over their valid
    (finite, > 0) pixels to 8-bit grey, invalid pixels black: a picture for display, not a measurement.
    """
    return _pixels_to_rgb(image_to_array(msg), msg.encoding)


def _pixels_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """``image_to_rgb`` of pixels laid out as ``image_to_array`` returns them for ``encoding``."""
    if encoding in ("16UC1", "32FC1"):
        return np.repeat(_depth_to_grey(pixels)[..., None], 3, axis=2)
    if encoding in _YUV422_TO_RGB and pixels.shape[1] % 2:
        raise ConversionError(f"{encoding} image has odd width {pixels.shape[1]}: 4:2:2 pixels come in pairs")
    if encoding in _CV_TO_RGB:
        rgb = cv2.cvtColor(pixels, _CV_TO_RGB[encoding])
    else:
        rgb = pixels.reshape(*pixels.shape[:2], -1)[..., list(_RGB_CHANNELS[encoding])]
    return (rgb >> 8 if rgb.dtype == np.uint16 else rgb).astype(np.uint8, copy=False)


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """A NumPy array as a little-endian, unpadded sensor_msgs/Image.

    rgb8/bgr8 take uint8 HxWx3 already in that channel order (the caller passes BGR for bgr8);
    mono8 uint8 HxW; mono16 uint16 HxW; 32FC1 any float HxW (stored as float32).
    """
    if encoding not in _ENCODABLE:
        raise ConversionError(
            f"cannot encode images as '{encoding}' (supported: {', '.join(_ENCODABLE)})"
        )
    arr = np.asarray(arr)
    base, channels = _DECODABLE[encoding]
    target = np.dtype(base)
    expected_ndim = 3 if channels > 1 else 2
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        want = "HxWx3" if channels > 1 else "HxW"
        raise ConversionError(f"array of shape {arr.shape} cannot be encoded as {encoding} ({want} needed)")
    dtype_ok = np.issubdtype(arr.dtype, np.floating) if encoding == "32FC1" else arr.dtype == target
    if not dtype_ok:
        raise ConversionError(f"array of dtype {arr.dtype} cannot be encoded as {encoding} ({target.name} needed)")
    height, width = arr.shape[:2]
    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = 0
    msg.step = int(width * channels * target.itemsize)
    msg.data = _payload(arr.astype(target, copy=False))
    return msg


# ------------------------------------------------------------------------------------- compressed images
_CODECS = ("jpeg", "jpg", "png", "tiff")
# sensor_msgs image_encodings::isColor: compressed_image_transport converts these to bgr8/bgr16 before encoding
_COLOUR = {"rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16", "nv12", "nv21", "nv24",
           *_YUV422_TO_RGB}
# compressed_depth_image_transport's ConfigHeader before the PNG: int32 format (INV_DEPTH), float32 depthParam[2]
_DEPTH_HEADER = np.dtype([("format", "<i4"), ("depth_param", "<f4", (2,))])


def compressed_image_to_rgb(msg: CompressedImage) -> np.ndarray:
    """A sensor_msgs/CompressedImage as uint8 HxWx3 RGB, with the contract of ``image_to_rgb``.

    ``format`` as image_transport writes it: ``"<encoding>; <jpeg|png|tiff> compressed [<bgr8|rgb8|bgr16..>]"``
    (compressed_image_transport), ``"<16UC1|32FC1>; compressedDepth [png]"`` (compressed_depth_image_transport),
    or a bare ``"jpeg"``/``"png"`` (older publishers, cv_bridge's toCompressedImageMsg): 1 channel is mono,
    3 BGR, 4 BGRA. A corrupt payload or an unknown format is a ConversionError.
    """
    return _pixels_to_rgb(*_decode_compressed(msg))


def _decode_compressed(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """The payload as ``image_to_array`` would give it, and the encoding that layout has."""
    fmt = str(msg.format)
    encoding, sep, rest = (part.strip() for part in fmt.partition(";"))
    words = rest.split()
    if sep and words[:1] == ["compressedDepth"]:
        return _decode_compressed_depth(msg, encoding, words[1:]), encoding
    if not sep:
        codec = encoding  # a bare "jpeg"
    else:
        codec = words[0] if words[1:2] == ["compressed"] else ""
    if codec.lower() not in _CODECS:
        raise ConversionError(f"unsupported CompressedImage format '{fmt}' (expected '<encoding>; "
                              f"<{'|'.join(_CODECS)}> compressed ...', '<encoding>; compressedDepth' or a bare codec)")
    pixels = _imdecode(_buffer(msg.data), fmt)
    if not sep or encoding in _COLOUR:
        # colour was converted to bgr (or, with ROS 1's color_space rgb, to rgb) before encoding
        return pixels, _layout_encoding(pixels, "rgb" if "compressed rgb" in rest else "bgr", fmt)
    if encoding not in _DECODABLE:
        raise ConversionError(f"unsupported image encoding '{encoding}' in CompressedImage format '{fmt}'")
    base, channels = _DECODABLE[encoding]
    if pixels.dtype != np.dtype(base) or (pixels.shape[2] if pixels.ndim == 3 else 1) != channels:
        raise ConversionError(f"CompressedImage '{fmt}' decodes to {pixels.shape} {pixels.dtype}, "
                              f"{encoding} has {channels} channel(s) of {np.dtype(base).name}")
    return pixels, encoding


def _imdecode(buf: np.ndarray, fmt: str) -> np.ndarray:
    """cv2.imdecode, refusing a JPEG cut before its end-of-image marker (which OpenCV 4 returns half grey)."""
    if bytes(buf[:2]) == b"\xff\xd8" and not buf.tobytes().rstrip(b"\0").endswith(b"\xff\xd9"):
        raise ConversionError(f"CompressedImage '{fmt}' holds a JPEG of {buf.size} bytes without its end marker: "
                              "truncated")
    try:
        pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except cv2.error:
        pixels = None
    if pixels is None:
        raise ConversionError(f"CompressedImage payload of {buf.size} bytes cannot be decoded as '{fmt}' "
                              "(corrupt or truncated)")
    return pixels


def _layout_encoding(pixels: np.ndarray, order: str, fmt: str) -> str:
    """The encoding of a decoded colour or mono image: mono8/16, bgr8/16, bgra8/16 (rgb* for ``order`` rgb)."""
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    bits = {np.dtype(np.uint8): "8", np.dtype(np.uint16): "16"}.get(pixels.dtype)
    if bits is None or channels not in (1, 3, 4):
        raise ConversionError(f"CompressedImage '{fmt}' decodes to {channels} channel(s) of {pixels.dtype}, "
                              "expected 1, 3 or 4 of uint8 or uint16")
    return "mono" + bits if channels == 1 else order + "a" * (channels == 4) + bits


def _decode_compressed_depth(msg: CompressedImage, encoding: str, codec: list[str]) -> np.ndarray:
    """compressedDepth payload: the 12-byte header, then a 16-bit PNG of depth (16UC1) or of quantized inverse
    depth (32FC1: ``z = a / (q - b)`` with a, b from the header, q = 0 -> NaN), as its subscriber decodes it."""
    fmt = str(msg.format)
    if encoding not in ("16UC1", "32FC1") or codec not in ([], ["png"]):
        raise ConversionError(f"unsupported compressedDepth format '{fmt}' (16UC1 or 32FC1, png; rvl is not supported)")
    buf = _buffer(msg.data)
    if buf.size <= _DEPTH_HEADER.itemsize:
        raise ConversionError(f"compressedDepth payload has {buf.size} bytes, not even its "
                              f"{_DEPTH_HEADER.itemsize}-byte header and an image")
    header = buf[: _DEPTH_HEADER.itemsize].view(_DEPTH_HEADER)[0]
    q = _imdecode(buf[_DEPTH_HEADER.itemsize:], fmt)
    if q.dtype != np.uint16 or q.ndim != 2:
        raise ConversionError(f"compressedDepth '{fmt}' decodes to {q.shape} {q.dtype}, expected one uint16 channel")
    if encoding == "16UC1":
        return q
    a, b = header["depth_param"]
    with np.errstate(divide="ignore"):
        return np.where(q > 0, a / (q.astype(np.float32) - b), np.float32(np.nan)).astype(np.float32)


# ---------------------------------------------------------------------------------------- point clouds
def _check_cloud_layout(msg: PointCloud2) -> np.ndarray:
    """Validate the buffer geometry of a PointCloud2 and return its data as a flat uint8 array."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if point_step <= 0:
        raise ConversionError(f"PointCloud2 point_step is {point_step}, must be positive")
    if row_step < width * point_step:
        raise ConversionError(
            f"PointCloud2 row_step {row_step} is smaller than width*point_step = {width * point_step}"
        )
    return _sized_buffer(msg.data, row_step * height, "PointCloud2 data", "row_step*height")


def _read_field(msg: PointCloud2, buf: np.ndarray, name: str, raw_uint32: bool = False) -> np.ndarray:
    """One field as a native-endian (height, width[, count]) array; ``raw_uint32`` reinterprets 4-byte fields."""
    field = next((f for f in msg.fields if f.name == name), None)
    if field is None:
        raise ConversionError(f"PointCloud2 has no '{name}' field (fields: {[f.name for f in msg.fields]})")
    if field.datatype not in _FIELD_TYPES:
        raise ConversionError(f"PointCloud2 field '{name}' has unknown datatype {field.datatype}")
    base = np.dtype(_FIELD_TYPES[field.datatype])
    if raw_uint32:
        if base.itemsize != 4:
            raise ConversionError(
                f"PointCloud2 field '{name}' is {_FIELD_TYPE_NAMES[field.datatype]}, a packed colour needs 4 bytes"
            )
        base = np.dtype("<u4")
    count = max(int(field.count), 1)
    end = int(field.offset) + count * base.itemsize
    if end > msg.point_step:
        raise ConversionError(
            f"PointCloud2 field '{name}' ends at byte {end}, beyond point_step {msg.point_step}"
        )
    dtype = _with_order(base.str, bool(msg.is_bigendian))
    fmt = (dtype, (count,)) if count > 1 else dtype
    point = np.dtype({"names": [name], "formats": [fmt], "offsets": [int(field.offset)],
                      "itemsize": int(msg.point_step)})
    view = np.ndarray(shape=(msg.height, msg.width), dtype=point, buffer=buf,
                      strides=(int(msg.row_step), int(msg.point_step)))
    return view[name].astype(dtype.newbyteorder("="), order="C")


def pointcloud2_fields(msg: PointCloud2, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Generic reader: each named field as a native-endian array of shape (height, width[, count]).

    Any field order and offsets, padding inside ``point_step`` and after each row (``row_step``),
    all PointField datatypes INT8..FLOAT64, big- or little-endian data. Fields not named are ignored.
    """
    buf = _check_cloud_layout(msg)
    return {name: _read_field(msg, buf, name) for name in names}


def pointcloud2_to_xyz(msg: PointCloud2) -> tuple[np.ndarray, bool]:
    """Point coordinates as float32: ``(HxWx3, True)`` when organized (height > 1), else ``(Nx3, False)``.

    x/y/z must be FLOAT32 or FLOAT64. A point with any non-finite coordinate is invalid: in the
    organized case it becomes (0, 0, 0), the project's invalid convention, keeping the pixel grid;
    in the unorganized case it is dropped.
    """
    fields = pointcloud2_fields(msg, ("x", "y", "z"))
    for name in ("x", "y", "z"):
        if not np.issubdtype(fields[name].dtype, np.floating) or fields[name].ndim != 2:
            field = next(f for f in msg.fields if f.name == name)
            raise ConversionError(
                f"PointCloud2 field '{name}' is {_FIELD_TYPE_NAMES[field.datatype]} with count {field.count}, "
                "x/y/z must be single FLOAT32 or FLOAT64 values"
            )
    xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=-1).astype(np.float32, copy=False)
    valid = np.isfinite(xyz).all(axis=-1)
    if msg.height > 1:
        xyz[~valid] = 0.0
        return xyz, True
    return np.ascontiguousarray(xyz[valid]), False


def pointcloud2_rgb(msg: PointCloud2) -> np.ndarray | None:
    """The packed 'rgb' (or 'rgba') colour of each point as uint8 HxWx3 RGB, or None if there is none.

    PCL convention: a 4-byte field (FLOAT32 or UINT32) holding ``a<<24 | r<<16 | g<<8 | b``; the bits
    are reinterpreted as uint32, never converted as a float. An unorganized cloud gives 1xNx3.
    """
    names = [f.name for f in msg.fields]
    name = "rgb" if "rgb" in names else "rgba" if "rgba" in names else None
    if name is None:
        return None
    packed = _read_field(msg, _check_cloud_layout(msg), name, raw_uint32=True)
    if packed.ndim != 2:
        raise ConversionError(f"PointCloud2 field '{name}' has count > 1, a packed colour is one value")
    rgb = np.stack([packed >> 16, packed >> 8, packed], axis=-1)
    return (rgb & 0xFF).astype(np.uint8)


def xyz_to_pointcloud2(
    xyz: np.ndarray, header: Header | None = None, intensity: np.ndarray | None = None
) -> PointCloud2:
    """(N,3) or organized (H,W,3) points as a little-endian PointCloud2 with float32 x,y,z[,intensity].

    3-D input gives an organized cloud (height H); ``intensity`` must match ``xyz.shape[:-1]``.
    ``is_dense`` is False: invalid points are published as they are.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3:
        raise ConversionError(f"points of shape {xyz.shape} are not (N,3) or (H,W,3)")
    grid = xyz[None] if xyz.ndim == 2 else xyz  # an unorganized cloud is one row
    names = ["x", "y", "z"]
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape != xyz.shape[:-1]:
            raise ConversionError(f"intensity of shape {intensity.shape} does not match points {xyz.shape[:-1]}")
        names.append("intensity")
    point = np.dtype({"names": names, "formats": ["<f4"] * len(names), "offsets": [4 * i for i in range(len(names))],
                      "itemsize": 4 * len(names)})
    height, width = grid.shape[:2]
    packed = np.empty((height, width), dtype=point)
    for i, name in enumerate(("x", "y", "z")):
        packed[name] = grid[..., i]
    if intensity is not None:
        packed["intensity"] = intensity.reshape(height, width)
    msg = PointCloud2()
    msg.header = header if header is not None else Header()
    msg.height, msg.width = int(height), int(width)
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = point.itemsize
    msg.row_step = point.itemsize * int(width)
    msg.data = _payload(packed)
    msg.is_dense = False
    return msg


# ------------------------------------------------------------------------------------------ CameraInfo
_CAMERA_MATRICES = {"k": (3, 3), "r": (3, 3), "p": (3, 4)}


def camera_info_to_dict(msg: CameraInfo) -> dict[str, Any]:
    """CameraInfo as {width, height, distortion_model, d (n,), k (3,3), r (3,3), p (3,4)}, float64 arrays.

    Rejects wrong matrix lengths and an uncalibrated camera (fx or fy not positive; ROS marks an
    uncalibrated camera with k all zeros), which would make back-projection meaningless.
    """
    out: dict[str, Any] = {
        "width": int(msg.width),
        "height": int(msg.height),
        "distortion_model": str(msg.distortion_model),
        "d": np.asarray(msg.d, dtype=np.float64).copy(),
    }
    out.update(_camera_matrices({name: getattr(msg, name) for name in _CAMERA_MATRICES}))
    fx, fy = out["k"][0, 0], out["k"][1, 1]
    if not (fx > 0 and fy > 0):
        raise ConversionError(f"CameraInfo k has fx={fx:g}, fy={fy:g}: the camera is uncalibrated")
    return out


def _camera_matrices(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in _CAMERA_MATRICES.items():
        flat = np.asarray(values[name], dtype=np.float64).ravel()
        if flat.size != shape[0] * shape[1]:
            raise ConversionError(f"CameraInfo {name} has {flat.size} values, expected {shape[0] * shape[1]}")
        out[name] = flat.reshape(shape).copy()
    return out


def dict_to_camera_info(d: Mapping[str, Any], header: Header | None = None) -> CameraInfo:
    """The inverse of ``camera_info_to_dict``: k/r/p may be flat or shaped (9, 9, 12 values)."""
    matrices = _camera_matrices(d)
    msg = CameraInfo()
    msg.header = header if header is not None else Header()
    msg.width, msg.height = int(d["width"]), int(d["height"])
    msg.distortion_model = str(d["distortion_model"])
    msg.d = [float(v) for v in np.asarray(d["d"], dtype=np.float64).ravel()]
    for name, value in matrices.items():
        setattr(msg, name, value.ravel())
    return msg


# ------------------------------------------------------------------------------------------ depth images
def depth_image_to_metres(msg: Image | CompressedImage) -> np.ndarray:
    """HxW float32 depth in metres of a 16UC1 (mm) or 32FC1 (m) image, raw or compressed (compressedDepth or
    png); invalid depths (0, negative, NaN, inf) are 0."""
    if isinstance(msg, CompressedImage):
        pixels, encoding = _decode_compressed(msg)
    else:
        pixels, encoding = image_to_array(msg), msg.encoding
    if encoding not in ("16UC1", "32FC1"):
        raise ConversionError(f"'{encoding}' is not a depth image (REP 118: 16UC1 in mm or 32FC1 in m)")
    z = pixels * 0.001 if encoding == "16UC1" else pixels.astype(np.float64)
    return np.where(np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)


def depth_image_to_xyz(depth: Image | CompressedImage, info: CameraInfo, rectified: bool = False) -> np.ndarray:
    """Organized HxWx3 float32 cloud in metres, in the camera's optical frame, of a depth image on ``info``'s grid.

    depth_image_proc's point_cloud_xyz: ``x = (u - cx) z / fx, y = (v - cy) z / fy`` at pixel (u, v), with
    fx, fy, cx, cy from K (the image as the camera delivers it, e.g. a depth registered to the colour camera),
    or from P when ``rectified`` (an image_rect; depth_image_proc takes them from P through image_geometry).
    Distortion is not applied, as there. Invalid depths give (0, 0, 0).
    """
    cam = camera_info_to_dict(info)
    z = depth_image_to_metres(depth)
    if z.shape != (cam["height"], cam["width"]):
        raise ConversionError(f"depth image is {z.shape[1]}x{z.shape[0]} but camera_info is "
                              f"{cam['width']}x{cam['height']}")
    name = "p" if rectified else "k"
    m = cam[name]
    fx, fy, cx, cy = m[0, 0], m[1, 1], m[0, 2], m[1, 2]
    if not (np.isfinite(m).all() and fx > 0 and fy > 0):
        raise ConversionError(f"CameraInfo {name} has fx={fx:g}, fy={fy:g} and must be finite with fx, fy > 0: "
                              f"{m.ravel().tolist()}")
    xyz = np.empty((*z.shape, 3), dtype=np.float32)
    xyz[..., 0] = z * ((np.arange(z.shape[1]) - cx) / fx)
    xyz[..., 1] = z * ((np.arange(z.shape[0]) - cy) / fy)[:, None]
    xyz[..., 2] = z
    return xyz
