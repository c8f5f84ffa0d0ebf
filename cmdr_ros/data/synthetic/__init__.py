"""A simulated cutting cell: cut polyurethane foam blocks seen from above, with exact defect masks.

Why: the tests, the lite-model demo and the bag demo need 2D+3D samples with pixel-exact ground truth
and no download. A part is a foam block on a conveyor table, seen by a top-down RGB camera and a
pixel-aligned structured-light sensor (``render_part``), or scanned by a laser line profilometer
(``render_profilometer_cloud``). ``generate_dataset`` writes samples in the MVTec 3D-AD layout,
``generate_profilometer_dataset`` rasterized profilometer scans as a 3D-only class, ``generate_scan_dataset``
the same scans unorganized, in the sensor's order (``cmdr_ros.data.scans`` layout).

Modules: ``cell`` (``CellConfig``, its camera, ``PartFrame``), ``part`` (the foam block), ``defects`` (the
six defect types), ``render`` (camera rendering: shading and sensor), ``profilometer`` and ``dataset``.
"""
from cmdr_ros.data.synthetic.cell import CellConfig, PartFrame, calibration_dict
from cmdr_ros.data.synthetic.dataset import (class_ids, generate_dataset, generate_profilometer_dataset,
                                             generate_scan_dataset)
from cmdr_ros.data.synthetic.defects import DEFECT_TYPES, GEOMETRIC_DEFECTS
from cmdr_ros.data.synthetic.profilometer import render_profilometer_cloud
from cmdr_ros.data.synthetic.render import render_part

__all__ = [
    "DEFECT_TYPES",
    "GEOMETRIC_DEFECTS",
    "CellConfig",
    "PartFrame",
    "calibration_dict",
    "class_ids",
    "generate_dataset",
    "generate_profilometer_dataset",
    "generate_scan_dataset",
    "render_part",
    "render_profilometer_cloud",
]
