"""The inspection node under faults and load: malformed inputs over DDS, a burst into a small queue, a 60 s soak,
shutdown by signal, fail-open regressions (unit level), bad parameters at start, checkpoint faults at configure and
an inference that raises mid-stream.

The contract checked everywhere: every input gets exactly one ~/result stamped with its header (a synchronized set
one, an orphan input its own), seq +1 per decision with no gap, and whatever is not judged gets the on_error
decision (reject) with judged=false and the cause in ``error``; the node stays alive and judges the next good part.

No assertion depends on timing between processes: tests wait for events (a result with a stamp, a diagnostics
report with a value) with time-outs that only bound a failing test. The figures printed (latency, RSS, counts,
shutdown time) are reported, never compared with a clock, except the documented bounds (exit within 20 s of a
signal, RSS growth < 200 MB over the soak).
"""
from __future__ import annotations

import array
import collections
import contextlib
import re
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.duration import Duration
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from cmdr_ros import CmdrError
from cmdr_ros.judge import Judge, JudgeSettings, NotJudgeable, is_reject
from cmdr_ros.ros.conversions import array_to_image, xyz_to_pointcloud2
from cmdr_ros.ros.node.parameters import check, defaults, read_params_file
from cmdr_ros.ros.node.typed_decision import AVAILABLE as TYPED_AVAILABLE, UNAVAILABLE as TYPED_UNAVAILABLE
from node_harness import (RESULT_S, CommitBeforePublish, NodeProcess, RosSide, call_service, cell_camera_info,
                          cell_frame, check_audit_has, lifecycle_state, stamp_ns, start_node, train_cell_model,
                          values_of)

pytestmark = pytest.mark.slow

W = H = 64  # the simulated cell's frames
NOT_JUDGED_KINDS = {"bad_input", "ConversionError", "degraded", "implausible", "non_finite", "unmatched", "overload",
                    "superseded", "timeout", "internal", "shutdown"}
node_running = contextlib.contextmanager(start_node)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """An rgbd model (the one the nodes serve) and a 3d one (a checkpoint of the wrong mode)."""
    d = tmp_path_factory.mktemp("fault_models")
    return {mode: train_cell_model(d / f"data_{mode}", mode, d / f"{mode}.ckpt") for mode in ("rgbd", "3d")}


@pytest.fixture(scope="module")
def frames():
    """A few pre-rendered good parts as ready messages: publishing one only sets the stamps."""
    out = []
    for seed in range(4):
        part = cell_frame(500 + seed)
        out.append((part, array_to_image(part.rgb, "rgb8", Header(frame_id="camera")),
                    xyz_to_pointcloud2(part.xyz, Header(frame_id="camera"))))
    return out


def _send(ros: RosSide, stamp: Any, image: Image | None = None, cloud: PointCloud2 | None = None) -> None:
    if image is not None:
        image.header.stamp = stamp
        ros.image_pub.publish(image)
    if cloud is not None:
        cloud.header.stamp = stamp
        ros.points_pub.publish(cloud)


def _send_info(ros: RosSide, info: CameraInfo, stamp: Any) -> None:
    info.header = Header(stamp=stamp, frame_id="camera")
    ros.info_pub.publish(info)
    ros.info_pub.wait_for_all_acked(Duration(seconds=10))


def _send_good(ros: RosSide, frames: list, i: int = 0) -> Any:
    stamp = ros.next_stamp()
    _, img, cloud = frames[i % len(frames)]
    _send(ros, stamp, img, cloud)
    return stamp


def _check_judged(v: dict[str, str], what: str = "") -> None:
    assert v["judged"] == "true", (what, v)
    assert v["decision"] == ("reject" if is_reject(float(v["score"]), float(v["threshold"])) else "pass"), (what, v)


def _check_fail_safe(v: dict[str, str], kinds: set[str] | None = None, what: str = "") -> None:
    assert v["judged"] == "false" and v["decision"] == "reject", (what, v)
    assert v["error"] in (kinds or NOT_JUDGED_KINDS), (what, v)
    assert "score" not in v and v.get("reason"), (what, v)


def _results_after(ros: RosSide, seq0: int) -> list[dict[str, str]]:
    with ros.cond:
        return [values_of(m) for _, m in ros.received["result"] if int(values_of(m)["seq"]) > seq0]


def _check_every_input_answered_once(ros: RosSide, sent: dict[int, list[str]], seq0: int,
                                     timeout: float = RESULT_S) -> list[dict[str, str]]:
    """Wait until every input of ``sent`` ({stamp_ns: ['image', 'points']}; a stamp may carry two images) has its
    result, then check: exactly one result per input, the results after ``seq0`` are exactly these, seq consecutive
    from seq0 + 1, and the node's diagnostics (nothing pending or waiting) agree that it made no other decision."""
    def answered() -> dict[int, list[dict[str, str]]] | None:
        by_stamp: dict[int, list[dict[str, str]]] = collections.defaultdict(list)
        for _, m in ros.received["result"]:
            by_stamp[stamp_ns(m.header.stamp)].append(values_of(m))
        done = all(sum(len(v["inputs"].split("+")) for v in by_stamp.get(s, [])) >= len(want)
                   for s, want in sent.items())
        return by_stamp if done else None

    with ros.cond:
        by_stamp = ros.cond.wait_for(answered, timeout)
    assert by_stamp, _unanswered_report(ros, sent, timeout)
    for s, want in sent.items():
        got = [x for v in by_stamp[s] for x in v["inputs"].split("+")]
        assert sorted(got) == sorted(want), (s, want, by_stamp[s])
    ours = [v for s in sent for v in by_stamp[s]]
    seqs = sorted(int(v["seq"]) for v in ours)
    assert seqs == list(range(seq0 + 1, seq0 + 1 + len(ours))), f"seq gap or duplicate: {seqs}"
    others = [v for v in _results_after(ros, seq0) if stamp_ns_of(v) not in sent]
    assert not others, f"results for inputs never sent: {others}"
    last = seq0 + len(ours)
    d = ros.diagnostics(lambda v: int(v.get("seq", -1)) >= last and v.get("pending_sync") == "0"
                        and v.get("waiting") == "0", f"seq >= {last}, nothing pending", timeout=timeout)
    assert int(d["seq"]) == last, f"the node made {int(d['seq']) - seq0} decisions for {len(ours)} results"
    return ours


def _unanswered_report(ros: RosSide, sent: dict[int, list[str]], timeout: float) -> str:
    """What a failed wait saw: which inputs (by send order) have no result, and the node's last diagnostics."""
    with ros.cond:
        got: dict[int, list[str]] = collections.defaultdict(list)
        for _, m in ros.received["result"]:
            got[stamp_ns(m.header.stamp)] += values_of(m)["inputs"].split("+")
        last = next((({kv.key: kv.value for kv in st.values}) for _, arr in reversed(ros.received["diagnostics"])
                     for st in arr.status if st.name == "cmdr_inspection: node"), {})
        n_results = len(ros.received["result"])
    missing = [(i, s, sorted(set(want) - set(got.get(s, [])))) for i, (s, want) in enumerate(sent.items())
               if len(got.get(s, [])) < len(want)]
    return (f"timed out after {timeout} s: {len(missing)} of {len(sent)} stamps lack a result for some input "
            f"(send index, stamp, inputs unanswered; first 20): {missing[:20]}; {n_results} results received in all; "
            f"node's last diagnostics: {last}")


def stamp_ns_of(v: dict[str, str]) -> int:
    sec, nsec = v["stamp"].split(".")
    return int(sec) * 1_000_000_000 + int(nsec)


def _prime(ros: RosSide, frames: list) -> int:
    """Send a good part, wait for its judged result; its seq is the base of what follows."""
    v = ros.result(_send_good(ros, frames))
    _check_judged(v)
    return int(v["seq"])


# --------------------------------------------------------------------------------------- 5. fail-open (unit)
class StubDetector:
    """A detector whose prediction the test chooses (score, valid ratio), for the judge alone."""

    def __init__(self, score: float = 1.0, valid: float = 1.0, threshold: float | None = 2.0,
                 amap_value: float = 0.0) -> None:
        self.config = SimpleNamespace(mode="rgbd", uses_2d=True, uses_3d=True)
        self.threshold, self.score, self.valid, self.amap_value = threshold, score, valid, amap_value
        self.calls = 0

    def predict(self, rgb: Any, xyz: Any) -> Any:
        from cmdr_ros.model.detector import Prediction

        self.calls += 1
        mask = np.zeros((H, W), bool)
        mask.flat[:int(round(self.valid * H * W))] = True
        return Prediction(score=self.score, anomaly_map=np.full((H, W), self.amap_value, np.float32),
                          valid_mask=mask, grid_map=np.zeros((8, 8), np.float32), grid_valid=np.ones((8, 8), bool))


@pytest.fixture(scope="module")
def part():
    return cell_frame(11)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_is_not_judged(part, score):
    v = Judge(StubDetector(score=score)).judge(part.rgb, part.xyz)
    assert not v.judged and v.kind == "non_finite" and v.decision == "reject" and v.reject, v


def test_non_finite_anomaly_map_is_not_judged(part):
    v = Judge(StubDetector(score=0.5, amap_value=float("nan"))).judge(part.rgb, part.xyz)
    assert not v.judged and v.kind == "non_finite" and v.reject, v


@pytest.mark.parametrize("thr", [float("nan"), float("inf")])
def test_non_finite_threshold_is_refused(thr):
    with pytest.raises(CmdrError, match="threshold"):
        Judge(StubDetector(), threshold=thr)
    with pytest.raises(CmdrError, match="threshold"):
        Judge(StubDetector(threshold=thr))  # the checkpoint's own threshold
    judge = Judge(StubDetector())
    with pytest.raises(CmdrError):
        judge.set_threshold(thr)
    assert judge.threshold == 2.0
    with pytest.raises(NotJudgeable):
        is_reject(1.0, thr)
    assert "finite" in check("threshold", thr)


def test_cloud_in_micrometres_is_implausible(part):
    det = StubDetector(score=0.1)
    v = Judge(det).judge(part.rgb, part.xyz * 1e6)
    assert not v.judged and v.kind == "implausible" and v.reject and det.calls == 0, v


def _sparse_cloud(n: int) -> np.ndarray:
    """``n`` valid points of a good part, unorganized (each projects back onto its own pixel)."""
    xyz = cell_frame(12).xyz.reshape(-1, 3)
    idx = np.flatnonzero((xyz != 0).any(1))
    return xyz[idx[np.linspace(0, len(idx) - 1, n).astype(int)]].copy()


def test_sparse_projected_cloud_is_degraded(part):
    from cmdr_ros.ros.node.frame_judge import FrameJudge

    det = StubDetector(score=0.1)
    fj = FrameJudge.from_params(det, defaults())
    n = int(round(0.017 * H * W))  # 1.7 % of the image
    msgs = {"image": array_to_image(part.rgb, "rgb8", Header(frame_id="camera")),
            "points": xyz_to_pointcloud2(_sparse_cloud(n), Header(frame_id="camera"))}
    frame, v = fj.judge(msgs, cell_camera_info())
    assert frame is not None and frame.alignment == "projected"
    assert not v.judged and v.kind == "degraded" and v.reject and det.calls == 0, v
    assert 0.01 < v.coverage < 0.02, v.coverage
    v = Judge(det).judge(part.rgb, part.xyz, coverage=0.017)
    assert not v.judged and v.kind == "degraded" and v.reject, v


@pytest.mark.parametrize("valid", [0.0, 0.005])
def test_frame_with_too_few_valid_pixels_is_degraded(part, valid):
    v = Judge(StubDetector(score=0.1, valid=valid)).judge(part.rgb, part.xyz)  # score far below the threshold
    assert not v.judged and v.kind == "degraded" and v.decision == "reject", v


@pytest.mark.parametrize("name, value, why", [
    ("on_error", "foo", "one of"),
    ("input.reliability", "best-effort", "one of"),
    ("extrinsics", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "unit norm"),
    ("threshold", float("nan"), "finite"),
    ("max_range", float("inf"), "finite"),
])
def test_bad_parameter_is_refused_by_check_and_params_file(tmp_path, name, value, why):
    import yaml

    problem = check(name, value)
    assert problem is not None and why in problem, problem
    section: dict[str, Any] = {}
    node = section
    *parents, leaf = name.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"cmdr_inspection": {"ros__parameters": section}}))
    with pytest.raises(CmdrError, match=name.replace(".", r"\.")):
        read_params_file(path)


def test_bad_on_error_is_refused_by_the_judge_settings():
    with pytest.raises(CmdrError, match="on_error"):
        JudgeSettings(on_error="foo")


# ---------------------------------------------------------------------------- 1. malformed inputs over DDS
def _cloud(xyz: np.ndarray) -> PointCloud2:
    return xyz_to_pointcloud2(np.asarray(xyz, np.float32), Header(frame_id="camera"))


def _image(rgb: np.ndarray) -> Image:
    return array_to_image(rgb, "rgb8", Header(frame_id="camera"))


def _edit(msg: Any, **changes: Any) -> Any:
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


def _fields(names: tuple[str, ...], datatype: int = PointField.FLOAT32) -> list[PointField]:
    return [PointField(name=n, offset=4 * i, datatype=datatype, count=1) for i, n in enumerate(names)]


CONVERSION = {"ConversionError"}
BAD_INPUT = {"bad_input", "ConversionError"}


def _malformed_cases(good: Any) -> list[dict[str, Any]]:
    """Each case: name; image / cloud: the malformed message (absent: the good one, False: not sent); info: a
    CameraInfo published before the case; kinds: the error kinds a result may carry (None: the full set may be
    judged, an orphan fails safe); split_cloud: the cloud's stamp offset (ns) from the image's; no_info: must run
    before any CameraInfo was sent."""
    rgb, xyz = good.rgb, good.xyz
    valid = xyz.reshape(-1, 3)[(xyz.reshape(-1, 3) != 0).any(1)]
    cam = cell_camera_info

    def data(msg: Any, n: int) -> Any:
        msg.data = msg.data[:n]
        return msg

    return [
        # point clouds: layout
        dict(name="cloud without z field", cloud=_edit(_cloud(xyz), fields=_fields(("x", "y"))), kinds=CONVERSION),
        dict(name="point_step smaller than x/y/z", cloud=_edit(_cloud(xyz), point_step=8), kinds=CONVERSION),
        dict(name="point_step 0", cloud=_edit(_cloud(xyz), point_step=0), kinds=CONVERSION),
        dict(name="row_step < width*point_step", cloud=_edit(_cloud(xyz), row_step=W * 12 - 4), kinds=CONVERSION),
        dict(name="cloud data shorter than declared", cloud=data(_cloud(xyz), H * W * 12 // 2), kinds=CONVERSION),
        dict(name="cloud 10^6 x 10^6 declared, 1 kB data",
             cloud=_edit(_cloud(xyz), width=10**6, height=10**6, row_step=12 * 10**6,
                         data=array.array("B", bytes(1200))), kinds=CONVERSION),
        dict(name="x/y/z as INT32", cloud=_edit(_cloud(xyz), fields=_fields(("x", "y", "z"), PointField.INT32)),
             kinds=CONVERSION),
        dict(name="unknown field datatype", cloud=_edit(_cloud(xyz), fields=_fields(("x", "y", "z"), 42)),
             kinds=CONVERSION),
        # point clouds: content
        dict(name="all-NaN cloud", cloud=_cloud(np.full_like(xyz, np.nan)), kinds={"degraded"}),
        dict(name="all-inf cloud", cloud=_cloud(np.full_like(xyz, np.inf)), kinds={"degraded"}),
        dict(name="empty cloud (0 points)", cloud=_cloud(np.zeros((0, 3))), kinds=BAD_INPUT | {"degraded"}),
        dict(name="is_bigendian on little-endian data", cloud=_edit(_cloud(xyz), is_bigendian=True),
             kinds={"implausible", "ConversionError", "degraded", "non_finite", "bad_input"}),
        dict(name="stuck sensor (identical points)", cloud=_cloud(np.broadcast_to(valid.mean(0), xyz.shape)),
             kinds={"bad_input", "degraded"}),
        dict(name="cloud x1e6 (micrometres)", cloud=_cloud(xyz * 1e6), kinds={"implausible"}),
        # images
        dict(name="image step < width*3", image=_edit(_image(rgb), step=W * 3 - 1), kinds=CONVERSION),
        dict(name="image step > data", image=_edit(_image(rgb), step=W * 3 + 16), kinds=CONVERSION),
        dict(name="image data shorter than declared", image=data(_image(rgb), W * 3 * H // 2), kinds=CONVERSION),
        dict(name="unknown image encoding", image=_edit(_image(rgb), encoding="foo_bar8"), kinds=CONVERSION),
        dict(name="zero-size image", image=_edit(_image(rgb), width=0, height=0, step=0, data=array.array("B")),
             kinds=CONVERSION),
        # alignment (no camera_info has been sent yet: these come first)
        dict(name="image 32x32, cloud 64x64, no camera_info", image=_image(rgb[::2, ::2].copy()),
             kinds=BAD_INPUT, no_info=True),
        dict(name="CameraInfo all zeros, unorganized cloud", cloud=_cloud(valid), info=CameraInfo(),
             kinds=BAD_INPUT),
        dict(name="camera_info of another size", cloud=_cloud(valid),
             info=_edit(cam(), width=32, height=32), kinds=BAD_INPUT),
        dict(name="projection covering 1.7% of the image", cloud=_cloud(_sparse_cloud(70)), info=cam(),
             kinds={"degraded"}),
        dict(name="unorganized cloud behind the camera", cloud=_cloud(valid * [1, 1, -1]), info=cam(),
             kinds={"degraded", "bad_input"}),
        # synchronization
        dict(name="image only (no cloud)", cloud=False, kinds={"unmatched"}),
        dict(name="cloud only (no image)", image=False, kinds={"unmatched"}),
        dict(name="image and cloud 0.2 s apart", split_cloud=200_000_000, kinds={"unmatched"}),
        dict(name="duplicate stamps (2 images, 1 cloud)", duplicate=True, kinds=None),
        dict(name="stamps going backwards", backwards=True, kinds=None),
    ]


@pytest.fixture(scope="class")
def default_node(ros, models, tmp_path_factory):
    """A node with default parameters (what the cell runs)."""
    yield from start_node(ros, tmp_path_factory.mktemp("node_default"), {"checkpoint": models["rgbd"]["checkpoint"]},
                          (ros.image_pub, ros.points_pub))


class TestDefaultNode:
    def test_malformed_inputs_get_one_fail_safe_result_each(self, ros, default_node, frames):
        good_image, good_cloud = frames[0][1], frames[0][2]
        cases = _malformed_cases(frames[0][0])
        first_info = next(i for i, c in enumerate(cases) if c.get("info") is not None)
        assert all(not c.get("no_info") for c in cases[first_info:]), "cases without camera_info must come first"
        seq0 = _prime(ros, frames)
        sent: dict[int, list[str]] = {}
        table = []
        for i, case in enumerate(cases):
            if case.get("info") is not None:  # the node keeps the latest CameraInfo: send it before the good part
                _send_info(ros, case["info"], ros.next_stamp())
            g = _send_good(ros, frames, i)
            _check_judged(ros.result(g))  # the good part after the previous bad one is judged normally
            sent[stamp_ns(g)] = ["image", "points"]
            stamp = ros.next_stamp()
            image = case.get("image", good_image) or None  # False: not sent
            cloud = case.get("cloud", good_cloud) or None
            expect: dict[int, list[str]] = {}
            if case.get("backwards"):  # older than the part judged just before (and unique)
                stamp = rclpy.time.Time(nanoseconds=stamp_ns(g) - 500_000_000).to_msg()
                _send(ros, stamp, image, cloud)
                expect[stamp_ns(stamp)] = ["image", "points"]
            elif case.get("duplicate"):
                _send(ros, stamp, _image(frames[1][0].rgb))
                _send(ros, stamp, image, cloud)
                expect[stamp_ns(stamp)] = ["image", "image", "points"]
            elif case.get("split_cloud"):
                later = rclpy.time.Time(nanoseconds=stamp_ns(stamp) + case["split_cloud"]).to_msg()
                _send(ros, stamp, image)
                _send(ros, later, None, cloud)
                expect[stamp_ns(stamp)], expect[stamp_ns(later)] = ["image"], ["points"]
            else:
                _send(ros, stamp, image, cloud)
                expect[stamp_ns(stamp)] = [n for n, m in (("image", image), ("points", cloud)) if m is not None]
            rows = []
            for s, want in expect.items():
                st = rclpy.time.Time(nanoseconds=s).to_msg()
                ros.wait_for(f"{case['name']}: results for {want}",
                             lambda st=st, n=len(want): sum(len(v["inputs"].split("+"))
                                                            for v in ros.results_for(st)) >= n)
                results = ros.results_for(st)
                assert sorted(x for v in results for x in v["inputs"].split("+")) == sorted(want), (case, results)
                for v in results:
                    if case["kinds"] is None:  # duplicate / backwards: an orphan fails safe, a full set is judged
                        if v["inputs"] == "image+points":
                            _check_judged(v, case["name"])
                        else:
                            _check_fail_safe(v, {"unmatched"}, case["name"])
                    else:
                        _check_fail_safe(v, case["kinds"], case["name"])
                    rows.append(v)
                sent[s] = want
            assert default_node.proc.poll() is None, f"node died on {case['name']}\n{default_node.logs()}"
            table.append((case["name"], case["kinds"] is not None, rows))
        g = _send_good(ros, frames)
        _check_judged(ros.result(g))
        sent[stamp_ns(g)] = ["image", "points"]
        _check_every_input_answered_once(ros, sent, seq0)
        print(f"\n{'kind':42s} {'inputs':12s} {'decision':8s} {'judged':6s} {'error':15s} reason")
        for name, _, rows in table:
            for v in rows:
                print(f"{name:42s} {v['inputs']:12s} {v['decision']:8s} {v['judged']:6s} {v.get('error', ''):15s} "
                      f"{v.get('reason', '')[:100]}")
        rows = check_audit_has(default_node.audit_db, _results_after(ros, seq0))  # judged and not judged, on record
        print(f"audit store: {len(rows)} rows, every published decision among them")
        strict = [name for name, fail_safe, _ in table if fail_safe]
        errors = collections.Counter(v.get("error", "judged") for _, _, rows in table for v in rows)
        print(f"malformed kinds tried: {len(table)}, of which must fail safe: {len(strict)}; outcomes {dict(errors)}")
        assert len(strict) >= 15
        assert "Traceback" not in default_node.stderr(), default_node.logs()

    def test_soak_10hz_60s(self, ros, default_node, frames):
        n_parts, rate = 600, 10.0
        seq0 = _prime(ros, frames)
        sent: dict[int, list[str]] = {}
        t_start = time.monotonic()
        rss_10s = None
        for i in range(n_parts):
            delay = t_start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[stamp_ns(_send_good(ros, frames, i))] = ["image", "points"]
            if i == int(10 * rate):
                rss_10s = default_node.rss_mb()
            assert i % 50 or default_node.proc.poll() is None, default_node.logs()
        t_sent = time.monotonic()
        ours = _check_every_input_answered_once(ros, sent, seq0, timeout=120)
        rss_end = default_node.rss_mb()
        t_end = time.monotonic()
        assert default_node.proc.poll() is None, default_node.logs()
        judged, fail_safe, kinds = _split_checked(ours)
        lat = np.array([float(v["latency_ms"]) for v in judged])
        with ros.cond:
            diag = sum(1 for t, m in ros.received["diagnostics"] if t_start <= t <= t_end
                       and any(s.name == "cmdr_inspection: node" for s in m.status))
        print(f"\nsoak: sent {n_parts} in {t_sent - t_start:.1f} s, results {len(ours)}, judged {len(judged)}, "
              f"fail-safe rejects {len(fail_safe)} {dict(kinds)}; latency p50 {np.percentile(lat, 50):.0f} ms "
              f"p99 {np.percentile(lat, 99):.0f} ms; RSS {rss_10s:.0f} MB at 10 s -> {rss_end:.0f} MB "
              f"(growth {rss_end - rss_10s:+.0f} MB); {diag} diagnostics reports")
        # a set whose partner reached the node's callback more than sync.timeout after it (a starved executor under
        # this overload) is two 'unmatched' results, one per input: still every input answered once, both rejected
        split = {s: rs for s, rs in collections.Counter(stamp_ns_of(v) for v in ours).items() if rs > 1}
        assert all(v["error"] == "unmatched" for v in ours if stamp_ns_of(v) in split), ours
        assert len(ours) == n_parts + len(split) and len(judged) > 0
        assert rss_end - rss_10s < 200
        assert diag >= 20
        assert "Traceback" not in default_node.stderr(), default_node.logs()


def _split_checked(results: list[dict[str, str]]) -> tuple[list, list, collections.Counter]:
    """Judged and fail-safe results, each checked, and the fail-safe causes counted."""
    judged = [v for v in results if v["judged"] == "true"]
    fail_safe = [v for v in results if v["judged"] == "false"]
    for v in judged:
        _check_judged(v)
    for v in fail_safe:
        _check_fail_safe(v)
    return judged, fail_safe, collections.Counter(v["error"] for v in fail_safe)


# ------------------------------------------------------------------------------------------------- 2. burst
@pytest.fixture(scope="class")
def burst_node(ros, models, tmp_path_factory):
    yield from start_node(ros, tmp_path_factory.mktemp("node_burst"),
                          {"checkpoint": models["rgbd"]["checkpoint"], "worker.queue_size": 2, "audit.timeout": 10.0},
                          (ros.image_pub, ros.points_pub))


class TestBurst:
    def test_burst_into_a_queue_of_two(self, ros, burst_node, frames):
        truncated = xyz_to_pointcloud2(frames[1][0].xyz, Header(frame_id="camera"))
        truncated.data = truncated.data[:len(truncated.data) // 3]
        sent: dict[int, list[str]] = {}
        special = {}
        committed = ros.hooks["result"] = CommitBeforePublish(burst_node.audit_db)
        for i in range(12):  # as fast as possible
            sent[stamp_ns(_send_good(ros, frames, i))] = ["image", "points"]
            if i == 4:
                s = ros.next_stamp()
                _send(ros, s, frames[0][1], truncated)
                sent[stamp_ns(s)], special["truncated"] = ["image", "points"], stamp_ns(s)
            if i == 7:
                s = ros.next_stamp()
                _send(ros, s, frames[2][1])
                sent[stamp_ns(s)], special["lone image"] = ["image"], stamp_ns(s)
        ours = _check_every_input_answered_once(ros, sent, 0)  # a fresh node: seq from 1
        by = {stamp_ns_of(v): v for v in ours}
        lone = by[special["lone image"]]
        assert lone["inputs"] == "image" and lone["error"] == "unmatched", lone
        _check_fail_safe(lone, {"unmatched"})
        _check_fail_safe(by[special["truncated"]], {"ConversionError", "overload"})
        del ros.hooks["result"]
        assert committed.checked >= len(ours) and not committed.missing, \
            f"published before their audit row was committed: {committed.missing}"
        check_audit_has(burst_node.audit_db, ours)
        judged, fail_safe, kinds = _split_checked(ours)
        print(f"\nburst: sent {len(sent)} stamps (12 good, 1 truncated cloud, 1 lone image), results {len(ours)}, "
              f"judged {len(judged)}, fail-safe {len(fail_safe)} {dict(kinds)}, seq 1..{len(ours)}")
        assert burst_node.proc.poll() is None, burst_node.logs()
        assert "Traceback" not in burst_node.stderr(), burst_node.logs()


# ---------------------------------------------------------------------------------------------- 4. shutdown
def _wait_exit(node: NodeProcess, timeout: float = 20) -> int:
    try:
        return node.proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: kill, and say so with the code
        node.proc.kill()
        node.proc.wait(timeout=10)
        return -999


@pytest.fixture(scope="class", params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def shutdown_run(request, ros, models, frames, tmp_path_factory) -> SimpleNamespace:
    """A fresh node (time_budget 60 s, sync.timeout 60 s: nothing is decided by a clock here). A lone image the
    synchronizer holds (the sentinel), a burst of 10 parts and a second lone image, every input acknowledged by the
    node's readers, then the signal; once the sentinel's 'shutdown' result shows that the node is settling, one more
    lone image (owed a result when the node's reader, still subscribed, acknowledged it). Records what came back."""
    sig = request.param
    params = {"checkpoint": models["rgbd"]["checkpoint"], "time_budget": 60.0, "sync.timeout": 60.0,
              "sync.queue_size": 50}
    owed: dict[int, list[str]] = {}
    with node_running(ros, tmp_path_factory.mktemp("node_shutdown"), params, (ros.image_pub, ros.points_pub)) as node:
        sentinel = ros.next_stamp()
        _send(ros, sentinel, _image(frames[3][0].rgb))
        owed[stamp_ns(sentinel)] = ["image"]
        ros.diagnostics(lambda v: int(v.get("pending_sync", 0)) >= 1, "the sentinel held by the synchronizer")
        for i in range(10):
            owed[stamp_ns(_send_good(ros, frames, i))] = ["image", "points"]
        lone = ros.next_stamp()
        _send(ros, lone, _image(frames[2][0].rgb))
        owed[stamp_ns(lone)] = ["image"]
        for pub in (ros.image_pub, ros.points_pub):  # the node's readers hold every input before the signal
            assert pub.wait_for_all_acked(Duration(seconds=20))
        t0 = time.monotonic()
        node.proc.send_signal(sig)
        settling = ros.result(sentinel, timeout=20)
        late = ros.next_stamp()
        _send(ros, late, _image(frames[1][0].rgb))
        late_owed = ros.image_pub.wait_for_all_acked(Duration(seconds=10)) and ros.image_pub.get_subscription_count()
        if late_owed:  # the node's reader was still there and acknowledged it
            owed[stamp_ns(late)] = ["image"]
        code = _wait_exit(node)
        shutdown_s = time.monotonic() - t0
    by_stamp: dict[int, list[dict[str, str]]] = collections.defaultdict(list)

    def all_answered() -> bool:
        by_stamp.clear()
        for _, m in ros.received["result"]:
            by_stamp[stamp_ns(m.header.stamp)].append(values_of(m))
        return all(s in by_stamp for s in owed)

    with ros.cond:  # the node has exited: what it sent is delivered or lost; the wait only bounds the loss case
        ros.cond.wait_for(all_answered, timeout=5)
    typed: dict[int, list[str]] = collections.defaultdict(list)  # ~/decision classes by stamp (with vision_msgs)

    def all_typed() -> bool:
        typed.clear()
        for _, m in ros.received.get("decision", []):
            typed[stamp_ns(m.header.stamp)].append(m.results[0].class_id)
        return sum(map(len, typed.values())) >= sum(map(len, by_stamp.values()))

    with ros.cond:
        ros.cond.wait_for(all_typed, timeout=5 if "decision" in ros.received else 0)
    results = [v for vs in by_stamp.values() for v in vs]
    kinds = collections.Counter(v.get("error", "judged") for v in results)
    missing = [s for s in owed if s not in by_stamp]
    print(f"\n{signal.Signals(sig).name}: exit {code} after {shutdown_s:.2f} s; {len(owed)} stamps owed a result "
          f"(late lone image {'accepted' if late_owed else 'not accepted'} by the node), {len(results)} results "
          f"{dict(kinds)}, {len(missing)} stamps unanswered; node: "
          + "; ".join(x.split("]: ")[-1] for x in node.stderr().splitlines() if "stopping:" in x))
    return SimpleNamespace(sig=sig, code=code, shutdown_s=shutdown_s, owed=owed, settling=settling,
                           lone=stamp_ns(lone), by_stamp=dict(by_stamp), results=results, missing=missing,
                           stderr=node.stderr(), logs=node.logs(), audit_db=node.audit_db,
                           typed={k: sorted(v) for k, v in typed.items()})


class TestShutdown:
    def test_exits_zero_and_what_it_answers_fails_safe(self, shutdown_run):
        r = shutdown_run
        assert r.code == 0, f"exit code {r.code} (-999: killed after 20 s)\n{r.logs}"
        assert r.shutdown_s < 20
        assert "Traceback" not in r.stderr, r.logs
        _check_fail_safe(r.settling, {"shutdown"}, "the lone image waiting at the signal")
        assert not [v for v in r.results if stamp_ns_of(v) not in r.owed], r.results
        for s, vs in r.by_stamp.items():  # at most one result per input
            got = sorted(x for v in vs for x in v["inputs"].split("+"))
            assert len(got) == len(set(got)) and set(got) <= set(r.owed[s]), vs
            for v in vs:
                if v["judged"] == "true":
                    _check_judged(v)
                else:
                    _check_fail_safe(v, {"shutdown", "overload"})
        seqs = sorted(int(v["seq"]) for v in r.results)
        assert len(set(seqs)) == len(seqs) and seqs[0] == 1, seqs

    def test_every_input_the_node_accepted_is_answered(self, shutdown_run):
        r = shutdown_run
        got = [(v["stamp"], v["inputs"], v.get("error", "judged")) for v in r.results]
        assert not r.missing, f"no result for {len(r.missing)} of {len(r.owed)} stamps: {r.missing}; got {got}"
        for s, want in r.owed.items():
            assert sorted(x for v in r.by_stamp[s] for x in v["inputs"].split("+")) == sorted(want), r.by_stamp[s]
        assert sorted(int(v["seq"]) for v in r.results) == list(range(1, len(r.results) + 1))
        lone = r.by_stamp[r.lone][0]
        assert lone["error"] == "shutdown" and lone["decision"] == "reject", lone

    @pytest.mark.skipif(not TYPED_AVAILABLE, reason=TYPED_UNAVAILABLE)
    def test_every_answer_has_its_typed_decision(self, shutdown_run):
        """The decisions settled at the signal reach ~/decision too (the node waits for their acknowledgement)."""
        r = shutdown_run
        assert r.typed == {s: sorted(v["class_id"] for v in vs) for s, vs in r.by_stamp.items()}
        assert r.typed[r.lone] == ["reject"]

    def test_the_audit_store_is_consistent_and_complete(self, shutdown_run):
        import sqlite3

        r = shutdown_run
        con = sqlite3.connect(r.audit_db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        rows = check_audit_has(r.audit_db, r.results)  # no published decision is missing
        assert sorted(int(x["seq"]) for x in rows) == list(range(1, len(rows) + 1)), "a gap in the stored decisions"
        print(f"\n{signal.Signals(r.sig).name}: audit store ok, {len(rows)} rows for {len(r.results)} results")


# --------------------------------------------------------------------------------- 6. parameters at start
def test_bad_start_parameters_exit_non_zero_and_say_why(ros, models, tmp_path_factory):
    cases = {"on_error": ({"on_error": "foo"}, "on_error"),
             "input.reliability": ({"input.reliability": "best-effort"}, "input.reliability"),
             # refused by rclpy itself ("Wrong parameter type, expected '3' got '4'"): named with both types
             "threshold type": ({"threshold": "abc"},
                                "parameter 'threshold' expects type double (a number), got type string: 'abc'"),
             "missing checkpoint": ({}, "checkpoint not found")}
    missing = tmp_path_factory.mktemp("nothing") / "missing.ckpt"
    procs = {}
    for name, (params, _) in cases.items():  # all at once (they only differ in why they refuse)
        p = {"device": "cpu", "diagnostics_period": 0.5, "checkpoint": models["rgbd"]["checkpoint"], **params}
        if name == "missing checkpoint":
            p["checkpoint"] = str(missing)
        procs[name] = NodeProcess(tmp_path_factory.mktemp("node_bad_param"), ros.domain_id, p)
    try:
        for name, (params, why) in cases.items():
            node = procs[name]
            code = node.proc.wait(timeout=120)
            assert code != 0, node.logs()
            assert why in node.stderr(), node.logs()
            d = ros.diagnostics(lambda v, why=why: v.get("state", "").startswith("cannot configure")
                                and why in v["state"], f"the reason '{why}'")
            assert d["_level"] == DiagnosticStatus.ERROR and why in d["_message"], d
            if name == "threshold type":
                assert f"parameter refused at start: {why}" in node.stderr(), node.logs()
                assert d["parameters_refused"] == "1", d
            print(f"\n{name}: exit {code}, /diagnostics ERROR: {d['_message'][:150]}")
    finally:
        for node in procs.values():
            node.stop(timeout=10)


# ------------------------------------------------------------------------ 7. checkpoint faults at configure
def _transition(ros: RosSide, change: Any, get: Any, transition: int, goal: int) -> bool:
    """Trigger a transition; whether the node reached ``goal`` (its answer, or its state when the answer was lost)."""
    response = call_service(change, ChangeState.Request(transition=Transition(id=transition)))
    if response is not None:
        return response.success
    return lifecycle_state(get) == goal


def test_checkpoint_faults_at_configure(ros, models, frames, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node_lifecycle")
    good = Path(models["rgbd"]["checkpoint"])
    raw = good.read_bytes()
    truncated, tampered = tmp / "truncated.ckpt", tmp / "tampered.ckpt"
    truncated.write_bytes(raw[:len(raw) // 2])
    mid = len(raw) // 2
    tampered.write_bytes(raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 64]) + raw[mid + 64:])
    change = ros.node.create_client(ChangeState, "/cmdr_inspection/change_state")
    get = ros.node.create_client(GetState, "/cmdr_inspection/get_state")
    node = NodeProcess(tmp, ros.domain_id, {"device": "cpu", "diagnostics_period": 0.5, "autostart": "false",
                                            "warmup": "false", "mode": "rgbd"})
    ros.clear()
    try:
        def state() -> int:
            return lifecycle_state(get)

        def configure() -> bool:
            return _transition(ros, change, get, Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert configure() is False, "configured without a checkpoint"  # started without one
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.proc.poll() is None
        for name, path, why in (("truncated", truncated, "truncated"), ("tampered", tampered, "checksum|corrupt"),
                                ("3d model for mode rgbd", models["3d"]["checkpoint"], "mode")):
            assert ros.set_parameter("checkpoint", str(path)) == (True, "")
            assert configure() is False, name
            assert state() == State.PRIMARY_STATE_UNCONFIGURED, name
            assert node.proc.poll() is None, node.logs()
            d = ros.diagnostics(lambda v, p=str(path): v.get("state", "").startswith("cannot configure")
                                and p in v["state"], f"the reason for {name}")
            assert d["_level"] == DiagnosticStatus.ERROR
            assert re.search(why, d["state"]), d["state"]
            print(f"\n{name}: configure refused: {d['state'][:160]}")
        assert ros.set_parameter("checkpoint", str(good)) == (True, "")
        assert configure() is True
        ok = _transition(ros, change, get, Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
        assert ok and state() == State.PRIMARY_STATE_ACTIVE
        node.wait_active((ros.image_pub, ros.points_pub))
        v = ros.result(_send_good(ros, frames))
        _check_judged(v)
        assert v["model_id"] == models["rgbd"]["model_id"]
    finally:
        ros.node.destroy_client(change)
        ros.node.destroy_client(get)
        code = node.stop()
    assert code == 0, node.logs()
    t0 = time.monotonic()
    while any(p.get_subscription_count() for p in (ros.image_pub, ros.points_pub)) and time.monotonic() - t0 < 10:
        time.sleep(0.1)


# ------------------------------------------------------------------------------ 8. the node in this process
@contextlib.contextmanager
def _inprocess_node(ros: RosSide, checkpoint: str, wait_active: bool = True):
    """An InspectionNode in this process (its own rclpy Context on the module's domain, a MultiThreadedExecutor in
    a thread), active and subscribed (unless not ``wait_active``); always cleaned up."""
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from cmdr_ros.ros.node.inspection_node import InspectionNode

    ros.clear()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros.domain_id, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = spinner = None
    try:
        node = InspectionNode(context=ctx, parameter_overrides=[
            Parameter("checkpoint", value=str(checkpoint)), Parameter("device", value="cpu"),
            Parameter("warmup", value=False), Parameter("diagnostics_period", value=0.5)])
        executor = MultiThreadedExecutor(num_threads=3, context=ctx)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        # active, subscribed, and its ~/result matched by the test side's subscription: a decision published before
        # discovery completes would never reach it (seen under load when a part is decided at once)
        _poll(lambda: not wait_active or node.lifecycle_state == "active" and ros.image_pub.get_subscription_count() >= 1
              and ros.points_pub.get_subscription_count() >= 1 and node._pubs["result"].get_subscription_count() >= 1,
              "the in-process node active and subscribed", lambda: node.exit_code is None)
        yield node, executor
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5)
        if spinner is not None:
            spinner.join(timeout=10)
        if node is not None:
            node.teardown()
            node.destroy_node()
        rclpy.shutdown(context=ctx)
        _poll(lambda: not any(p.get_subscription_count() for p in (ros.image_pub, ros.points_pub)),
              "the in-process node's subscriptions gone", timeout=10, fail=False)


def _poll(pred: Any, what: str, alive: Any = None, timeout: float = 120, fail: bool = True) -> bool:
    """Wait (polling an in-process state) until ``pred()``; the time-out only bounds a failure."""
    t0 = time.monotonic()
    while not pred():
        assert alive is None or alive(), f"gave up waiting for {what}"
        if time.monotonic() - t0 > timeout:
            assert not fail, f"timed out after {timeout} s waiting for {what}"
            return False
        time.sleep(0.02)
    return True


def test_inference_raising_mid_stream_is_an_internal_fail_safe(ros, models, frames, monkeypatch):
    import torch

    with _inprocess_node(ros, models["rgbd"]["checkpoint"]) as (node, _):
        real_predict, calls = node.detector.predict, []

        def predict(rgb: Any, xyz: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_predict(rgb, xyz)

        monkeypatch.setattr(node.detector, "predict", predict)
        got = [ros.result(_send_good(ros, frames, i)) for i in range(3)]  # one at a time: part i is inference i
        _check_judged(got[0])
        _check_judged(got[2])
        _check_fail_safe(got[1], {"internal"})
        assert "OutOfMemoryError" in got[1]["reason"], got[1]
        assert [int(v["seq"]) for v in got] == [1, 2, 3]
        assert node.snapshot()["not_judged"] == {"internal": 1}
        print(f"\ninference raising: {[(v['judged'], v.get('error', ''), v['decision']) for v in got]}")


def test_teardown_decides_every_part_still_held(ros, models, frames, monkeypatch):
    """Deterministic: the sequence main() runs at a signal (settle_all, executor.shutdown, teardown) with a part and a
    lone image that arrived after settle_all, while the inference of an earlier part is still running."""
    with _inprocess_node(ros, models["rgbd"]["checkpoint"]) as (node, executor):
        real_predict = node.detector.predict

        def predict(rgb: Any, xyz: Any) -> Any:  # an inference still running when the node is told to stop
            node._stop.wait(30)
            return real_predict(rgb, xyz)

        monkeypatch.setattr(node.detector, "predict", predict)
        first = _send_good(ros, frames, 0)
        _poll(lambda: node.snapshot()["inflight_s"] > 0, "the first part in inference")
        node.settle_all("shutdown", "the node was stopped before this part was judged")  # main() at the signal
        _check_fail_safe(ros.result(first), {"shutdown"})
        later = _send_good(ros, frames, 1)  # the subscriptions are still there: these arrive after settle_all
        lone = ros.next_stamp()
        _send(ros, lone, _image(frames[2][0].rgb))
        _poll(lambda: node.snapshot()["waiting"] >= 1 and node.snapshot()["pending_sync"] >= 1,
              "the later part queued and the lone image held by the synchronizer")
        executor.shutdown(timeout_sec=5)
        node.teardown()
        with ros.cond:
            ros.cond.wait_for(lambda: ros.results_for(later) and ros.results_for(lone), timeout=5)
        answered = {"later part": ros.results_for(later), "lone image": ros.results_for(lone)}
        print(f"\nteardown after settle_all: {({k: [v.get('error', 'judged') for v in r] for k, r in answered.items()})}")
        assert all(answered.values()), f"parts held by the node at teardown got no result: {answered}"
        for r in answered.values():
            _check_fail_safe(r[0], {"shutdown"})


# ------------------------------------------------------------------------------ 9. lifecycle transitions
def test_a_transition_that_raises_fails_cleanly_and_says_why(ros, models, frames, monkeypatch):
    """rclpy swallows an exception of a transition callback; the node logs it with its cause, releases what the
    transition created, reports it on /diagnostics (ERROR) and the transition fails: a later one can succeed."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from cmdr_ros.ros.node import inputs as inputs_module  # where the node makes its synchronizer

    with _inprocess_node(ros, models["rgbd"]["checkpoint"]) as (node, _):
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        real = inputs_module.make_synchronizer

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("simulated middleware failure")

        monkeypatch.setattr(inputs_module, "make_synchronizer", broken)
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert node.state_text.startswith("cannot activate: RuntimeError: simulated middleware failure")
        assert node.inputs.sync is None and node._watch_timer is None
        d = ros.diagnostics(lambda v: v.get("state", "").startswith("cannot activate"), "the failed activate")
        assert d["_level"] == DiagnosticStatus.ERROR and "simulated" in d["_message"], d
        monkeypatch.setattr(inputs_module, "make_synchronizer", real)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        _poll(lambda: ros.image_pub.get_subscription_count() >= 1 and ros.points_pub.get_subscription_count() >= 1,
              "the node subscribed again")
        _check_judged(ros.result(_send_good(ros, frames)))


def test_services_answer_during_a_long_configure(ros, models, monkeypatch):
    """Autostart configures in a callback group of its own: parameter and lifecycle services answer meanwhile, and
    a parameter set then is in force once configure ends."""
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState

    from cmdr_ros.model import checkpoint

    entered, gate, real = threading.Event(), threading.Event(), checkpoint.load_checkpoint

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        gate.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", slow_load)
    get = ros.node.create_client(GetState, "/cmdr_inspection/get_state")
    try:
        with _inprocess_node(ros, models["rgbd"]["checkpoint"], wait_active=False) as (node, _):
            assert entered.wait(60), "configure never started"
            assert lifecycle_state(get) == State.TRANSITION_STATE_CONFIGURING  # answered while configure blocks
            assert ros.set_parameter("threshold", 2.5) == (True, "")
            assert node.state_text == "unconfigured"
            gate.set()
            _poll(lambda: node.lifecycle_state == "active", "the node active after the slow configure")
            assert node.judge.threshold == 2.5
    finally:
        gate.set()
        ros.node.destroy_client(get)


def test_diagnostics_faults_are_levels_not_decisions():
    """What makes /diagnostics WARN or ERROR (InspectionNode._faults, called without a node): an incompatible QoS is
    an ERROR; stale inputs, a pretrained (paper) model on CPU and decisions not published within the time budget
    are warnings; nothing wrong is OK."""
    import torch

    from cmdr_ros.config import preset
    from cmdr_ros.ros.node.inspection_node import InspectionNode

    params = {"diagnostics.stale_after": 2.0, "time_budget": 5.0, "diagnostics.window": 60.0, "sync.timeout": 1.0}
    node = SimpleNamespace(_p=params.get, inputs=SimpleNamespace(sync=object()))
    s = {"qos_incompatible": 0, "input_idle_s": 0.0, "not_judged": {}, "unsent": 0, "unsent_s": 0.0,
         "recent_faults": {}, "late_inputs": {}, "qos_incompatible_now": {}}

    def det(name: str, device: str) -> Any:
        return SimpleNamespace(device=torch.device(device), config=preset(name))

    assert InspectionNode._faults(node, s, det("lite", "cpu")) == []
    assert InspectionNode._faults(node, s, det("paper", "cuda")) == []
    (level, text), = InspectionNode._faults(node, s, det("paper", "cpu"))
    assert level == DiagnosticStatus.WARN and "CPU" in text
    (level, text), = InspectionNode._faults(node, {**s, "input_idle_s": 3.0}, det("lite", "cpu"))
    assert level == DiagnosticStatus.WARN and text.startswith("stale inputs")
    (level, text), = InspectionNode._faults(node, {**s, "qos_incompatible": 1, "qos_incompatible_now": {"/image": 1}},
                                            None)
    assert level == DiagnosticStatus.ERROR and "input.reliability" in text
    assert InspectionNode._faults(node, {**s, "qos_incompatible": 1}, None) == []  # that publisher is gone
    (level, text), = InspectionNode._faults(node, {**s, "not_judged": {"unmatched": 1},
                                                   "recent_faults": {"unmatched": 1}}, None)
    assert level == DiagnosticStatus.WARN and "in the last 60 s" in text
    (level, text), = InspectionNode._faults(node, {**s, "unsent": 2, "unsent_s": 6.0}, None)  # past time_budget
    assert level == DiagnosticStatus.WARN and "not published" in text


# ------------------------------------------------------------------------------ 10. diagnostics recover
def _diagnostics_after(ros: RosSide, t0: float, pred: Any, what: str, timeout: float = 60) -> tuple[float, Any]:
    """The first node status received after ``t0`` (time.monotonic) for which ``pred(status, values)`` holds, with
    its arrival time (waits for it)."""
    def find() -> tuple[float, Any] | None:
        for t, arr in ros.received["diagnostics"]:
            for st in arr.status:
                if t > t0 and st.name == "cmdr_inspection: node" and pred(st, {kv.key: kv.value for kv in st.values}):
                    return t, st
        return None
    return ros.wait_for(what, find, timeout)


def test_diagnostics_return_to_ok_after_a_transient_fault(ros, models, frames, tmp_path_factory):
    """A lone image (no cloud within sync.timeout: unmatched) makes the node WARN, naming the late input; with no new
    fault /diagnostics is OK again once diagnostics.window has passed, while the counters keep the record. Refused
    run-time sets are named with their types, logged and counted. The recovery time (fault's result -> first OK) is
    printed, never asserted (timing)."""
    window = 2.0
    params = {"checkpoint": models["rgbd"]["checkpoint"], "diagnostics.window": window, "sync.timeout": 0.5}
    with node_running(ros, tmp_path_factory.mktemp("node_recover"), params, (ros.image_pub, ros.points_pub)) as node:
        _check_judged(ros.result(_send_good(ros, frames)))  # a complete set: the late-input figures have a sample
        lone = ros.next_stamp()
        _send(ros, lone, _image(frames[1][0].rgb))
        _check_fail_safe(ros.result(lone), {"unmatched"})
        with ros.cond:
            t_fault = next(t for t, m in ros.received["result"] if m.header.stamp == lone)
        t_warn, warn = _diagnostics_after(ros, t_fault - 5.0, lambda st, v: st.level == DiagnosticStatus.WARN
                                          and int(v.get("recent_faults", 0)) >= 1, "a WARN for the unmatched image")
        v = {kv.key: kv.value for kv in warn.values}
        assert "unmatched 1" in warn.message and "within sync.timeout 0.5 s" in warn.message, warn.message
        for key in ("late.image_p50_ms", "late.image_p95_ms", "late.points_p50_ms", "late.points_p95_ms"):
            assert float(v[key]) >= 0.0, (key, v)
        assert int(v["late.points_sets"]) >= 1, v
        t_ok, ok = _diagnostics_after(ros, t_warn, lambda st, v: st.level == DiagnosticStatus.OK,
                                      f"/diagnostics OK again (window {window:g} s)")
        v = {kv.key: kv.value for kv in ok.values}
        assert v["not_judged.unmatched"] == "1" and v["recent_faults"] == "0", v  # the record stays, the level recovers
        print(f"\ndiagnostics recovery: WARN {t_warn - t_fault:+.2f} s after the unmatched result, OK again "
              f"{t_ok - t_fault:.2f} s after it (diagnostics.window {window:g} s, diagnostics_period 0.5 s); "
              f"WARN said: {warn.message[:160]}")

        for _ in range(2):  # refused by rclpy's type check, before the node's own callback
            ok_, reason = ros.set_parameter("threshold", "abc")
            assert not ok_ and reason == "parameter 'threshold' expects type double (a number), got type string: " \
                                         "'abc'", reason
        ros.diagnostics(lambda v: v.get("parameters_refused") == "2", "two refused sets counted")
        ros.wait_for("the refusal in the node's log", lambda: "[parameter threshold] set refused: parameter "
                     "'threshold' expects type double" in node.stderr(), timeout=30)
