"""Geometry for the inspection node: bring a point cloud onto the image grid the model consumes
(``camera.py``, ``raster.py``, ``transforms.py``).

Two ways from an unordered cloud to an organized HxWx3 ``xyz_map`` (0 = no point):

* ``project_to_image``: a calibrated camera sees the part; the cloud (any frame, with the extrinsics
  ``T_cam_from_cloud``) is projected with the ROS ``sensor_msgs/CameraInfo`` model and z-buffered, so the
  map is pixel-aligned with that camera's RGB image (the 2D+3D mode).
* ``rasterize_on_plane``: no camera, e.g. a laser profilometer over a cutting cell; the cloud is gridded
  in the frame of its dominant plane, seen from above (the 3D-only mode).

Both return, for EVERY input point, the flat index of its pixel/cell, so ``scores_to_points`` can hand the
per-pixel anomaly map back to the points (depth images: ``ros.conversions.depth_image_to_xyz``).
Pixel convention (OpenCV/ROS): pixel (row r, column c) has its centre at image coordinates (u=c, v=r).
"""
from __future__ import annotations

from cmdr_ros.geometry.camera import (DISTORTION_MODELS, CameraIntrinsics, Projection, fit_plumb_bob_to_division,
                                      project_points, project_to_image)
from cmdr_ros.geometry.raster import MAX_RASTER_SIDE, PlaneFrame, Raster, rasterize_on_plane, scores_to_points
from cmdr_ros.geometry.transforms import finite_rows, make_transform, transform_points, valid_mask

__all__ = ["DISTORTION_MODELS", "MAX_RASTER_SIDE", "CameraIntrinsics", "PlaneFrame", "Projection", "Raster",
           "finite_rows", "fit_plumb_bob_to_division", "make_transform", "project_points", "project_to_image",
           "rasterize_on_plane",
           "scores_to_points", "transform_points", "valid_mask"]
