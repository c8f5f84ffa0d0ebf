"""``cmdr bench --compare``: the judge path with its fast paths against the plain way each one replaces, on the
same frames in the same process, so every speed-up is a ratio measured side by side, with what it changes.

The plain path (``plain_paths``), fast -> plain:

* background removal: DBSCAN's clusters computed on a grid of cells (``preprocess.cluster: grid``) -> exact DBSCAN
  (Open3D, the paper's code);
* point features placed on the model grid: pooled channels-last -> pooled in the reference's ``[C, G, G]`` layout;
* ``device: onnx`` only: the exported heads and scoring in onnxruntime -> the same in PyTorch.

``differences`` reports, over the frames judged both ways: the largest difference of the anomaly maps (relative to
the largest map value), of the image scores (relative), and the smallest IoU of the foreground masks.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

PLAIN = ["background removal: exact DBSCAN (Open3D) instead of its clusters on a grid of cells",
         "point features pooled on the grid in the reference's [C, G, G] layout instead of channels-last",
         "device onnx: the heads and scoring in PyTorch instead of onnxruntime"]


@contextlib.contextmanager
def plain_paths(det: Any) -> Iterator[None]:
    """``det`` judges the plain way for the duration (module docstring); everything is restored afterwards."""
    from cmdr_ros.model import backbones

    cluster, scoring, scatter = det.config.preprocess.cluster, det.scoring, backbones.scatter_points_to_grid
    det.config.preprocess.cluster, det.scoring = "dbscan", None
    backbones.scatter_points_to_grid = backbones.scatter_points_to_grid_reference
    try:
        yield
    finally:
        det.config.preprocess.cluster, det.scoring = cluster, scoring
        backbones.scatter_points_to_grid = scatter


def outcome(verdict: Any) -> tuple[float, np.ndarray, np.ndarray] | None:
    """What a judged frame gave (score, anomaly map, foreground mask), for ``differences``; None when not judged."""
    pred = verdict.prediction if verdict.judged else None
    if pred is None:
        return None
    if hasattr(pred, "point_scores"):  # a scan: its point scores, measured points as the "mask"
        return float(pred.score), np.nan_to_num(pred.point_scores), np.isfinite(pred.point_scores)
    return float(pred.score), pred.anomaly_map, pred.valid_mask


def differences(fast: list[Any], plain: list[Any]) -> dict[str, Any]:
    """The largest map and score differences and the smallest foreground IoU between the same frames judged the
    fast and the plain way (``outcome`` of each); frames not judged both ways are counted apart."""
    pairs = [(a, b) for a, b in zip(fast, plain) if a is not None and b is not None]
    out: dict[str, Any] = {"frames": len(pairs), "judged_one_way_only": sum((a is None) != (b is None)
                                                                            for a, b in zip(fast, plain))}
    if not pairs:
        return out
    map_diff, score_diff, iou = [], [], []
    for (sa, ma, va), (sb, mb, vb) in pairs:
        scale = max(float(np.abs(mb).max()), 1e-12)
        map_diff.append(float(np.abs(ma - mb).max()) / scale if ma.shape == mb.shape else float("inf"))
        score_diff.append(abs(sa - sb) / max(abs(sb), 1e-12))
        union = np.logical_or(va, vb).sum()
        iou.append(float(np.logical_and(va, vb).sum() / union) if union else 1.0)
    out.update(max_map_rel_diff=max(map_diff), max_score_rel_diff=max(score_diff), min_foreground_iou=min(iou))
    return out
