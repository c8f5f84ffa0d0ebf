"""ROS message <-> NumPy conversions for the inspection node (Image, CompressedImage, PointCloud2, CameraInfo):
``images.py``, ``clouds.py`` (point clouds, CameraInfo, depth to cloud), ``common.py`` (errors, headers, buffers; stamps: ``cmdr_ros.ros.stamps``).

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

from cmdr_ros.ros.conversions.clouds import (camera_info_to_dict, depth_image_to_xyz, dict_to_camera_info,
                                             pointcloud2_fields, pointcloud2_to_xyz, xyz_to_pointcloud2)
from cmdr_ros.ros.conversions.common import ConversionError, make_header
from cmdr_ros.ros.conversions.images import (array_to_image, compressed_image_to_rgb, depth_image_to_metres,
                                             image_to_array, image_to_rgb)

__all__ = [
    "ConversionError",
    "make_header",
    "image_to_rgb",
    "image_to_array",
    "compressed_image_to_rgb",
    "depth_image_to_metres",
    "depth_image_to_xyz",
    "array_to_image",
    "pointcloud2_fields",
    "pointcloud2_to_xyz",
    "xyz_to_pointcloud2",
    "camera_info_to_dict",
    "dict_to_camera_info",
]
