"""sensor_msgs/PointCloud2 and CameraInfo <-> NumPy, and a depth image on a camera's grid as an organized cloud."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cmdr_ros.geometry.transforms import finite_rows
from cmdr_ros.ros.conversions.common import ConversionError, payload_bytes, sized_buffer, with_byte_order
from cmdr_ros.ros.conversions.images import depth_image_to_metres

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
    return sized_buffer(msg.data, row_step * height, "PointCloud2 data", "row_step*height")


def _read_field(msg: PointCloud2, buf: np.ndarray, name: str) -> np.ndarray:
    """One field as a native-endian (height, width[, count]) array."""
    field = next((f for f in msg.fields if f.name == name), None)
    if field is None:
        raise ConversionError(f"PointCloud2 has no '{name}' field (fields: {[f.name for f in msg.fields]})")
    if field.datatype not in _FIELD_TYPES:
        raise ConversionError(f"PointCloud2 field '{name}' has unknown datatype {field.datatype}")
    base = np.dtype(_FIELD_TYPES[field.datatype])
    count = max(int(field.count), 1)
    end = int(field.offset) + count * base.itemsize
    if end > msg.point_step:
        raise ConversionError(
            f"PointCloud2 field '{name}' ends at byte {end}, beyond point_step {msg.point_step}"
        )
    dtype = with_byte_order(base.str, bool(msg.is_bigendian))
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


def pointcloud2_to_xyz(msg: PointCloud2, keep_invalid: bool = False) -> tuple[np.ndarray, bool]:
    """Point coordinates as float32: ``(HxWx3, True)`` when organized (height > 1), else ``(Nx3, False)``.

    x/y/z must be FLOAT32 or FLOAT64. A point with any non-finite coordinate is invalid: in the
    organized case it becomes (0, 0, 0), the project's invalid convention, keeping the pixel grid;
    in the unorganized case it is dropped. ``keep_invalid``: every point as sent, in message order (a scan whose
    per-point scores must line up with the message).
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
    if keep_invalid:
        return xyz, msg.height > 1
    valid = finite_rows(xyz)
    if msg.height > 1:
        xyz[~valid] = 0.0
        return xyz, True
    return np.ascontiguousarray(xyz[valid]), False


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
    msg.data = payload_bytes(packed)
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
