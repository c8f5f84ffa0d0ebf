"""From a synchronized set of messages to the detector's input, and from its result back to messages.

``assemble_frame`` decides how the cloud meets the image grid:

* an organized cloud of the image's size is pixel-aligned (used as it is) when its frame_id is the image's, or when
  ``registered`` says so (a depth camera's registered output);
* any other cloud with an image (rgbd) is projected into the camera with CameraInfo and the cloud-to-camera
  transform, nearest point per pixel (``geometry.project_to_image``). The transform is never guessed: identity
  for identical frame ids, else tf2 at the cloud's stamp, else the ``extrinsics`` parameter when it was set, else
  the frame is not judged (``no_transform``). ``Frame.transform`` records which.
* 3D-only: an organized cloud is used as it is; an unorganized one (laser profilometer) is rasterized on a
  regular grid over its dominant plane (``geometry.rasterize_on_plane``).
* a "chunks" model (the paper's cutting-cell pipeline, ``assemble_scan``; ``Frame.kind`` "chunks"): the cloud is
  one scanned part and is not rasterized: ``Frame.points`` holds every point of the message in message order (an organized cloud
  row-major), invalid ones (non-finite; in an organized cloud also the all-zero marker) as NaN, so the
  per-point scores line up with the message's points; alignment ``scan``.

Every case records, for each original point, the pixel its score is read from, so ``anomaly_cloud`` can
colour the sensor's own points (a scan: its own score, by index).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.config import MODALITIES, uses
from cmdr_ros.geometry import CameraIntrinsics, finite_rows, project_to_image, rasterize_on_plane, valid_mask
from cmdr_ros.judge import NotJudgeable, coverage_of
from sensor_msgs.msg import CompressedImage, Image

from cmdr_ros.ros.conversions import (camera_info_to_dict, compressed_image_to_rgb, depth_image_to_xyz, image_to_rgb,
                                      pointcloud2_to_xyz)

TransformLookup = Callable[[str, str, Any], "np.ndarray | None"]
INPUT_OF = {"2d": "image", "3d": "points"}  # the input message that carries each modality


def input_names(mode: str) -> list[str]:
    """The synchronized inputs of ``mode``, in the order the synchronizer takes them."""
    return [INPUT_OF[m] for m in MODALITIES[mode]]


def mode_of(names: Sequence[str]) -> str:
    """The mode whose inputs are ``names`` (e.g. ["image", "points"] -> rgbd)."""
    return next(m for m in MODALITIES if sorted(input_names(m)) == sorted(names))


@dataclass
class Frame:
    """One part to inspect, ready for ``CMDRDetector.predict``."""

    header: Any  # header of the primary input (the image, else the cloud): stamp and frame of every output map
    rgb: np.ndarray | None = None  # uint8 HxWx3
    xyz: np.ndarray | None = None  # float32 HxWx3 on the same grid as rgb (or the raster in 3D-only)
    points: np.ndarray | None = None  # Nx3 original cloud points (cloud frame), for the anomaly cloud
    point_pixel: np.ndarray | None = None  # N flat index into the HxW maps (-1: no pixel)
    cloud_header: Any = None
    coverage: float | None = None  # fraction of map pixels that hold a point
    alignment: str = "none"  # aligned | projected | rasterized | scan | none
    transform: str = "none"  # rgbd: identical_frames | registered | tf | parameter (how the cloud met the camera)
    frame_ids: dict[str, str] = field(default_factory=dict)
    cloud_shape: tuple[int, ...] = ()  # a scan: the message's (height, width) (unorganized: (1, N))
    kind: str = "frame"  # the pipeline kind of the part (cmdr_ros.pipelines; its messages: cmdr_ros.ros.kinds)


def _organized_points(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid points of an organized map and their flat pixel indices."""
    flat = xyz.reshape(-1, 3)
    idx = np.flatnonzero(valid_mask(flat))
    return flat[idx], idx


def decode_image(msg: Any) -> np.ndarray:
    """uint8 HxWx3 RGB of a raw or compressed image."""
    return compressed_image_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)


def decode_cloud(msg: Any, info: Any, projection: str = "auto") -> tuple[np.ndarray, bool]:
    """(points, organized) of a PointCloud2, or of a depth image back-projected with ``info`` (organized)."""
    if not isinstance(msg, (Image, CompressedImage)):
        return pointcloud2_to_xyz(msg)
    if info is None:
        raise CmdrError("a depth image input needs camera_info (none arrived yet) to become a cloud")
    return depth_image_to_xyz(msg, info, rectified=projection == "rectified"), True


def camera_model(info: Any, projection: str = "auto") -> CameraIntrinsics:
    """The camera of ``info`` as ``projection`` says: raw (K + D), rectified (P) or auto (P when D is zero)."""
    cam = CameraIntrinsics.from_dict(camera_info_to_dict(info))
    if projection == "rectified":
        return replace(cam, D=np.zeros_like(cam.D), distortion_model=cam.distortion_model)
    if projection == "raw":
        return replace(cam, P=np.hstack([cam.K, np.zeros((3, 1))]))
    return cam


def cloud_to_camera(image: Any, cloud: Any, lookup: TransformLookup | None,
                    extrinsics: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The cloud -> camera transform and where it came from; ``NotJudgeable('no_transform')`` when there is none."""
    cam_frame, cloud_frame = image.header.frame_id, cloud.header.frame_id
    if cam_frame == cloud_frame:
        return np.eye(4), "identical_frames"
    T = lookup(cam_frame, cloud_frame, cloud.header.stamp) if lookup is not None else None
    if T is not None:
        return T, "tf"
    if extrinsics is not None:
        return extrinsics, "parameter"
    raise NotJudgeable("no_transform", f"the cloud is in frame '{cloud_frame}', the image in '{cam_frame}', and "
                       f"{'tf2 has no transform between them' if lookup is not None else 'tf2 is not in use'} at the "
                       "cloud's stamp; publish it (e.g. a static transform) or set the extrinsics parameter")


def assemble_frame(mode: str, image: Any = None, cloud: Any = None, info: Any = None,
                   transform: TransformLookup | None = None, extrinsics: np.ndarray | None = None,
                   raster_resolution: float = 0.0, registered: bool = False, projection: str = "auto") -> Frame:
    """Convert and align one synchronized set. Raises ``CmdrError`` (or its ``ConversionError``, or
    ``NotJudgeable('no_transform')``) for a frame that cannot be judged: missing input, malformed message, cloud
    that cannot be placed on the image."""
    if uses(mode, "2d") and image is None:
        raise CmdrError(f"mode '{mode}' needs an image")
    if uses(mode, "3d") and cloud is None:
        raise CmdrError(f"mode '{mode}' needs a point cloud")
    primary = image if image is not None else cloud
    f = Frame(header=primary.header, cloud_header=cloud.header if cloud is not None else None)
    f.frame_ids = {k: m.header.frame_id for k, m in (("image", image), ("points", cloud), ("camera_info", info))
                   if m is not None}
    if image is not None:
        f.rgb = decode_image(image)
    if not uses(mode, "3d"):
        return f

    xyz, organized = decode_cloud(cloud, info, projection)
    if not uses(mode, "2d") and organized:
        f.xyz = xyz
        f.points, f.point_pixel = _organized_points(xyz)
        f.alignment = "aligned"
    elif not uses(mode, "2d"):
        if len(xyz) < 16:
            raise CmdrError(f"the point cloud has {len(xyz)} valid points: nothing to inspect")
        r = rasterize_on_plane(xyz, resolution=raster_resolution or None)
        f.xyz, f.points, f.point_pixel, f.alignment = r.xyz_map, xyz, r.cell_of_point, "rasterized"
    elif organized and xyz.shape[:2] == f.rgb.shape[:2] and (registered or
                                                             image.header.frame_id == cloud.header.frame_id):
        f.xyz = xyz
        f.points, f.point_pixel = _organized_points(xyz)
        f.alignment = "aligned"
        f.transform = "identical_frames" if image.header.frame_id == cloud.header.frame_id else "registered"
    else:
        if info is None:
            raise CmdrError(f"the cloud ({'x'.join(map(str, xyz.shape[:-1]))}) is not pixel-aligned with the "
                            f"{f.rgb.shape[1]}x{f.rgb.shape[0]} image and no camera_info arrived to project it")
        cam = camera_model(info, projection)
        if (cam.width, cam.height) != (f.rgb.shape[1], f.rgb.shape[0]):
            raise CmdrError(f"camera_info is {cam.width}x{cam.height} but the image is "
                            f"{f.rgb.shape[1]}x{f.rgb.shape[0]}")
        points = xyz.reshape(-1, 3)
        if organized:
            points, _ = _organized_points(xyz)
        T, f.transform = cloud_to_camera(image, cloud, transform, extrinsics)
        p = project_to_image(points, cam, T)
        f.xyz, f.points, f.point_pixel, f.alignment = p.xyz_map, points, p.pixel_of_point, "projected"
        f.coverage = p.coverage
    if f.coverage is None:
        f.coverage = coverage_of(f.xyz)
    return f


def scan_points(msg: Any, info: Any = None, projection: str = "auto") -> tuple[np.ndarray, tuple[int, ...]]:
    """Every point of a cloud message in message order (Nx3 float32, organized: row-major) with invalid points as
    NaN, and the message's (height, width). A PointCloud2 keeps its non-finite points (``pointcloud2_to_xyz``
    would drop them from an unorganized cloud); in an organized cloud, and in a depth image back-projected with
    ``info``, the all-zero 'no measurement' marker is invalid too."""
    if isinstance(msg, (Image, CompressedImage)):
        xyz, _ = decode_cloud(msg, info, projection)
        organized = True
    else:
        xyz, organized = pointcloud2_to_xyz(msg, keep_invalid=True)
    shape = tuple(int(n) for n in xyz.shape[:2])
    points = np.array(xyz.reshape(-1, 3), dtype=np.float32)
    bad = ~(valid_mask(points) if organized else finite_rows(points))
    points[bad] = np.nan
    return points, shape


def assemble_scan(cloud: Any, info: Any = None, projection: str = "auto") -> Frame:
    """The frame of one scanned part for a "chunks" model (module docstring): no raster, no image. Raises
    ``CmdrError`` (``ConversionError``) for a message that cannot be decoded; whether the points can be judged
    (too few, none measured, beyond ``max_range``) is the judge's to say (``Judge.judge``)."""
    if cloud is None:
        raise CmdrError("a scan needs a point cloud")
    f = Frame(header=cloud.header, cloud_header=cloud.header, alignment="scan", kind="chunks")
    f.frame_ids = {k: m.header.frame_id for k, m in (("points", cloud), ("camera_info", info)) if m is not None}
    f.points, f.cloud_shape = scan_points(cloud, info, projection)
    f.coverage = float(finite_rows(f.points).mean()) if len(f.points) else 0.0
    return f
