"""ROS message <-> NumPy conversions for the inspection node (Image, PointCloud2, CameraInfo).

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
clouds. One tested code path serves both environments.
"""
from __future__ import annotations

import array
from typing import Any, Mapping, Sequence

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cmdr_ros import CmdrError

__all__ = [
    "ConversionError",
    "image_to_rgb",
    "image_to_array",
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


# encoding -> (little-endian base dtype, channels). 16UC1 depth is in mm, 32FC1 depth in m (REP 118).
_DECODABLE: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "mono16": ("<u2", 1),
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
    """Raw pixels of a sensor_msgs/Image: HxWxC (colour) or HxW (mono, depth) in the native dtype.

    uint8 for 8-bit encodings, uint16 for mono16/16UC1 (depth in mm), float32 for 32FC1 (depth in m);
    channel order as in the encoding. Honours ``step`` (row padding) and ``is_bigendian``.
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

    Colour encodings are reordered (alpha dropped); mono8 is replicated to 3 channels; mono16 keeps
    its high byte (``>> 8``). 16UC1/32FC1 depth images are min-max stretched over their valid (finite,
    > 0) pixels to 8-bit grey, invalid pixels black: a picture for display, not a measurement.
    """
    arr = image_to_array(msg)
    enc = msg.encoding
    if enc == "rgb8":
        rgb = arr
    elif enc in ("bgr8", "bgra8"):
        rgb = arr[..., 2::-1]
    elif enc == "rgba8":
        rgb = arr[..., :3]
    else:
        if enc == "mono8":
            grey = arr
        elif enc == "mono16":
            grey = (arr >> 8).astype(np.uint8)
        else:  # 16UC1, 32FC1
            grey = _depth_to_grey(arr)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb)


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
