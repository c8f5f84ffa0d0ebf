"""The simulated cell's configuration, its camera and one rendered frame (``PartFrame``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry import CameraIntrinsics

_BORDER = 0.045  # image border strip (fraction of the width, 12 px at 256) that shows only the table


@dataclass(frozen=True)
class CellConfig:
    """Geometry, sensor and randomisation parameters of the simulated cell (lengths in metres)."""

    image_size: int = 256  # square images
    camera_distance: float = 0.45  # optical centre to table along the optical axis
    field_of_view: float = 0.26  # table width seen across the image
    block_length: tuple[float, float] = (0.10, 0.14)
    block_width: tuple[float, float] = (0.06, 0.09)
    block_height: tuple[float, float] = (0.03, 0.05)
    edge_radius: tuple[float, float] = (0.0015, 0.003)  # fillet of the cut edges
    max_rotation_deg: float = 20.0  # in-plane pose jitter
    max_translation: float = 0.015  # per axis
    max_table_tilt_deg: float = 1.5
    depth_noise: float = 0.0003  # sigma along the ray
    dropout_blobs: float = 2.0  # mean number of invalid blobs per frame
    pixel_dropout: float = 0.002  # fraction of isolated invalid pixels / lost profile points
    steep_slope: float = 2.5  # |grad h| above which a pixel is a steep side ...
    steep_dropout: float = 0.6  # ... and is invalid with this probability
    lighting_jitter: float = 0.05  # relative jitter of intensity, ambient and colour
    rgb_noise: float = 1.5  # sigma of RGB sensor noise, 8-bit levels
    material_hue: tuple[float, float] = (0.115, 0.145)  # foam colour (HSV, each drawn per part): pale yellow / cream
    material_saturation: tuple[float, float] = (0.25, 0.4)
    material_value: tuple[float, float] = (0.88, 0.95)
    profile_width: float = 0.22  # square area a profilometer scan covers
    profile_point_spacing: float = 0.0005  # along the laser line
    profile_line_spacing: float = 0.0018  # between lines (conveyor travel per profile)
    profile_view_angle_deg: float = 25.0  # triangulation angle: occlusion behind tall walls
    profile_noise: float = 0.0001
    profile_outliers: float = 0.002  # fraction of spurious points
    seed: int = 0  # default seed of ``generate_dataset``

    def __post_init__(self) -> None:
        for name in ("block_length", "block_width", "block_height", "edge_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise CmdrError(f"CellConfig.{name}={getattr(self, name)} must be a range 0 < low <= high")
        for name in ("material_hue", "material_saturation", "material_value"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise CmdrError(f"CellConfig.{name}={getattr(self, name)} must be a range 0 <= low <= high <= 1")
        if self.image_size < 64:
            raise CmdrError(f"CellConfig.image_size={self.image_size} is too small; use at least 64 pixels")
        if self.edge_radius[1] >= self.block_height[0] / 2:
            raise CmdrError("CellConfig.edge_radius must stay below half the lowest block height")
        reach = np.hypot(self.block_length[1], self.block_width[1]) / 2 + np.sqrt(2) * self.max_translation
        room = self.field_of_view / 2 * (1 - 2 * _BORDER)
        if reach >= room:
            raise CmdrError(
                f"CellConfig: a block can reach {reach:.3f} m from the centre but the view leaves only "
                f"{room:.3f} m inside the table border strip; widen field_of_view"
            )
        if self.profile_width <= 2 * reach:
            raise CmdrError(f"CellConfig.profile_width={self.profile_width} does not cover a block ({2 * reach:.3f} m)")

    def camera(self) -> CameraIntrinsics:
        """The camera: the field of view spans ``field_of_view`` metres of table across the image.

        A distortion-free pinhole (plumb_bob, D = 0): pixel (u, v) = (fx X/Z + cx, fy Y/Z + cy), pixel centres
        at integers. ``camera().to_dict()`` is its ``sensor_msgs/CameraInfo``, ``calibration_dict`` its
        MVTec 3D-AD ``camera_parameters.json``.
        """
        f = self.image_size * self.camera_distance / self.field_of_view
        c = (self.image_size - 1) / 2
        K = np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
        return CameraIntrinsics(self.image_size, self.image_size, K, D=np.zeros(5), distortion_model="plumb_bob")


def calibration_dict(camera: CameraIntrinsics) -> dict:
    """The content of an MVTec 3D-AD style ``calibration/camera_parameters.json`` for a pinhole camera.

    The inverse of ``CameraIntrinsics.from_mvtec_json`` for ``camera_type`` 'pinhole', which has no distortion.
    """
    if not camera.rectified:
        raise CmdrError(f"a pinhole camera_parameters.json has no distortion, but D = {camera.D.tolist()}")
    K = camera.K
    return {
        "camera_type": "pinhole",
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "image_width": camera.width,
        "image_height": camera.height,
    }


@dataclass
class PartFrame:
    """One rendered part: pixel-aligned RGB and organized xyz (camera frame, metres, invalid = 0)."""

    rgb: np.ndarray  # HxWx3 uint8
    xyz: np.ndarray  # HxWx3 float32
    mask: np.ndarray  # HxW bool: the defect's pixels (empty for a good part)
    defect: str  # "good" or one of DEFECT_TYPES
    camera: CameraIntrinsics

    @property
    def valid(self) -> np.ndarray:
        """HxW bool: pixels with a 3D measurement."""
        return self.xyz[..., 2] > 0

