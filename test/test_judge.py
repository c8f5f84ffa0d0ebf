"""The frame judge fails closed, and the node's parameters are validated by one rule book (fast, no DDS)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from cmdr_ros import CmdrError
from cmdr_ros.judge import Judge, JudgeSettings, NotJudgeable, is_reject
from cmdr_ros.model.detector import Prediction
from cmdr_ros.ros.node.parameters import PARAMETERS, check, defaults, read_params_file

GOOD_XYZ = np.dstack([*np.meshgrid(np.linspace(-0.05, 0.05, 32), np.linspace(-0.05, 0.05, 32)),
                     np.full((32, 32), 0.4)]).astype(np.float32)


class StubDetector:
    """predict() returns a fixed score and map: lets every branch of the judge be hit without a model."""

    def __init__(self, score: float = 1.0, threshold: float | None = 2.0, valid: float = 1.0, mode: str = "3d",
                 anomaly_map: np.ndarray | None = None):
        self.threshold, self.score, self.valid, self.calls = threshold, score, valid, 0
        self.config = SimpleNamespace(mode=mode, uses_2d=mode in ("rgbd", "2d"), uses_3d=mode in ("rgbd", "3d"))
        self.anomaly_map = anomaly_map

    def predict(self, rgb, xyz):
        self.calls += 1
        h, w = (xyz if xyz is not None else rgb).shape[:2]
        valid = np.zeros((h, w), bool)
        valid.flat[: int(self.valid * h * w)] = True
        amap = self.anomaly_map if self.anomaly_map is not None else np.full((h, w), 0.5, np.float32)
        return Prediction(self.score, amap, valid, np.zeros((8, 8), np.float32), np.ones((8, 8), bool))


def test_decision_rule():
    assert is_reject(2.0, 2.0) and is_reject(2.5, 2.0) and not is_reject(1.9, 2.0)
    for score, thr in ((math.nan, 2.0), (math.inf, 2.0), (1.0, math.nan), (1.0, -math.inf), (1.0, None)):
        with pytest.raises(NotJudgeable) as e:
            is_reject(score, thr)
        assert e.value.kind == "non_finite"


def test_judged_pass_and_reject():
    v = Judge(StubDetector(score=1.0)).judge(None, GOOD_XYZ)
    assert (v.judged, v.decision, v.score, v.threshold, v.coverage) == (True, "pass", 1.0, 2.0, 1.0)
    v = Judge(StubDetector(score=3.0)).judge(None, GOOD_XYZ)
    assert (v.judged, v.decision) == (True, "reject")


@pytest.mark.parametrize("case, kind", [
    ("nan_score", "non_finite"), ("inf_score", "non_finite"), ("nan_map", "non_finite"),
    ("scaled_1e6", "implausible"), ("low_coverage", "degraded"), ("low_valid_ratio", "degraded"),
    ("empty_cloud", "degraded"),
])
def test_doubt_is_never_a_pass(case, kind):
    """Each of these used to pass (score 0 or NaN compared false); now not judged, with the fail-safe decision."""
    det, xyz, coverage = StubDetector(), GOOD_XYZ, None
    if case == "nan_score":
        det.score = math.nan
    elif case == "inf_score":
        det.score = math.inf
    elif case == "nan_map":
        det.anomaly_map = np.full((32, 32), np.nan, np.float32)
    elif case == "scaled_1e6":
        xyz = GOOD_XYZ * 1e6
    elif case == "low_coverage":
        coverage = 0.017  # a projected cloud covering 1.7 % of the image
    elif case == "low_valid_ratio":
        det.valid = 0.001
    elif case == "empty_cloud":
        xyz = np.zeros_like(GOOD_XYZ)
    for on_error in ("reject", "skip"):
        v = Judge(det, JudgeSettings(on_error=on_error)).judge(None, xyz, coverage)
        assert (v.judged, v.kind, v.decision, v.score) == (False, kind, on_error, None), v
        assert not (v.decision == "pass")


def test_refused_inputs_keep_their_cause():
    class Refusing(StubDetector):
        def predict(self, rgb, xyz):
            raise CmdrError("the point cloud is degenerate")

    v = Judge(Refusing()).judge(None, GOOD_XYZ)
    assert (v.judged, v.kind, v.decision, v.reason) == (False, "bad_input", "reject", "the point cloud is degenerate")


def test_thresholds():
    with pytest.raises(CmdrError, match="no usable reject threshold"):
        Judge(StubDetector(threshold=None))
    with pytest.raises(CmdrError, match="no usable reject threshold"):
        Judge(StubDetector(threshold=math.nan))
    j = Judge(StubDetector(threshold=None), threshold=0.5)  # given explicitly: usable
    assert j.threshold == 0.5 and j.judge(None, GOOD_XYZ).decision == "reject"
    j.set_threshold(5.0)
    assert j.judge(None, GOOD_XYZ).decision == "pass"
    with pytest.raises(CmdrError):
        j.set_threshold(-1.0)  # back to the checkpoint's: it has none
    with pytest.raises(CmdrError, match="on_error"):
        JudgeSettings(on_error="foo")


@pytest.mark.parametrize("name, value", [
    ("on_error", "foo"), ("input.reliability", "best-effort"), ("threshold", math.nan), ("threshold", math.inf),
    ("extrinsics", [0, 0, 0, 0, 0, 0, 0]), ("extrinsics", [0, 0, 0, 0, 0, 0]), ("extrinsics", [0, 0, math.nan, 0, 0, 0, 1]),
    ("overload", "drop"), ("time_budget", 0.0), ("sync.timeout", -1.0), ("input.depth", 0), ("mode", "4d"),
    ("device", "gpu"), ("max_range", math.inf), ("autostart", "yes"), ("worker.queue_size", 2.5), ("nope", 1),
])
def test_bad_parameter_values_are_refused(name, value):
    assert check(name, value) is not None


def test_every_default_is_valid_and_the_file_reader_validates(tmp_path):
    assert all(check(n, v) is None for n, v in defaults().items()) and set(defaults()) == set(PARAMETERS)
    f = tmp_path / "p.yaml"
    f.write_text("/**/cmdr_inspection:\n  ros__parameters:\n    on_error: foo\n    input: {reliability: best-effort}\n")
    with pytest.raises(CmdrError, match="on_error must be one of.*input.reliability must be one of"):
        read_params_file(f)
    f.write_text("cmdr_inspection:\n  ros__parameters:\n    threshold: 2.5\n    sync: {timeout: 0.5}\n")
    p = read_params_file(f)
    assert (p["threshold"], p["sync.timeout"], p["on_error"]) == (2.5, 0.5, "reject")
    f.write_text("other_node:\n  ros__parameters: {}\n")
    with pytest.raises(CmdrError, match="no ros__parameters section"):
        read_params_file(f)
    with pytest.raises(CmdrError, match="cannot read"):
        read_params_file(tmp_path / "missing.yaml")


def test_check_plausible_measures_the_farthest_point_exactly():
    """The farthest measured point's float64 distance decides, to the last bit (NaN and all-zero points ignored)."""
    from cmdr_ros.judge import NotJudgeable, check_plausible

    rng = np.random.default_rng(9)
    xyz = rng.normal(0, 2, (30, 40, 3)).astype(np.float32)
    xyz[0, 0] = np.nan
    xyz[1, 1] = 0
    pts = xyz.reshape(-1, 3)[np.isfinite(xyz.reshape(-1, 3)).all(1) & (xyz.reshape(-1, 3) != 0).any(1)]
    far = float(np.sqrt((pts.astype(np.float64) ** 2).sum(1)).max())
    check_plausible(xyz, far)
    with pytest.raises(NotJudgeable, match=f"{far:.6g} m"):
        check_plausible(xyz, float(np.nextafter(far, 0)))
    check_plausible(np.zeros((4, 4, 3), np.float32), 1e-9)  # nothing measured: nothing too far
