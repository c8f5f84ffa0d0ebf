"""The node keeps evidence over real DDS (docs/evidence.md): a reject's and a not-judged part's folders with their
files, a sample of the passes, audit rows that name the folders, retention that deletes the oldest and counts, and an
evidence root that cannot be written, which delays and loses no decision and shows in /diagnostics. Frames the test
generates (no ../shared needed)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header

from cmdr_ros.evidence import ANOMALY_MAP, CLOUD, HEATMAP, IMAGE, META, read_evidence
from cmdr_ros.ros.conversions import image_to_array, xyz_to_pointcloud2
from cmdr_ros.ros.stamps import stamp_text
from node_harness import audit_rows, cell_frame, check_audit_has, start_node, train_cell_model

pytestmark = pytest.mark.slow
STATUS = "cmdr_inspection: evidence"
node_running = contextlib.contextmanager(start_node)


@pytest.fixture(scope="module")
def rgbd_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("evidence_model")
    return train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")


def send(ros, seed: int, *, cloud: bool = True, empty_cloud: bool = False) -> dict[str, str]:
    """One part (its image and, unless ``cloud`` is false, its cloud; ``empty_cloud``: every point unmeasured);
    its result."""
    part = cell_frame(seed)
    xyz = np.zeros_like(part.xyz) if empty_cloud else part.xyz
    stamp = ros.next_stamp()
    ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(xyz, Header(frame_id="camera")) if cloud else None)
    return ros.result(stamp)


def evidence_status(ros, pred, what: str) -> dict[str, str]:
    return ros.diagnostics(lambda v: "written" in v and pred(v), what, timeout=60, name=STATUS)


def test_rejects_not_judged_parts_and_a_sample_of_passes_are_kept(ros, rgbd_model, tmp_path):
    root = tmp_path / "evidence"
    params = {"checkpoint": rgbd_model["checkpoint"], "threshold": 1e6, "evidence.dir": str(root),
              "evidence.location": "nfs://plant/evidence", "evidence.passes": 0.5, "sync.timeout": 0.5}
    with node_running(ros, tmp_path, params, (ros.image_pub, ros.points_pub)) as node:
        passes = [send(ros, 10 + i) for i in range(4)]
        assert [v["decision"] for v in passes] == ["pass"] * 4
        assert ros.set_parameter("threshold", 0.0) == (True, "")  # every judged part is a reject from now on
        reject = send(ros, 20)
        degraded = send(ros, 21, empty_cloud=True)  # not judged, its frame decoded
        unmatched = send(ros, 22, cloud=False)  # not judged, no frame at all
        assert reject["decision"] == "reject" and reject["judged"] == "true"
        assert (degraded["judged"], degraded["error"]) == ("false", "degraded")
        assert (unmatched["judged"], unmatched["error"]) == ("false", "unmatched")
        status = evidence_status(ros, lambda v: v["written"] == "5", "the 5 kept parts written")
        assert (status["failed"], status["dropped"], status["location"]) == ("0", "0", "nfs://plant/evidence")
        assert status["_level"] == DiagnosticStatus.OK

        rows = {r["seq"]: r for r in check_audit_has(node.audit_db, passes + [reject, degraded, unmatched])}
        kept = {v["seq"] for v in (passes[1], passes[3], reject, degraded, unmatched)}
        assert {s for s, r in rows.items() if r["evidence"]} == kept  # the 2nd and 4th pass: evidence.passes 0.5
        assert all(rows[s]["evidence_root"] == "nfs://plant/evidence" for s in kept)
        assert all(rows[s]["evidence_root"] is None for s in rows if s not in kept)

        def files(v):
            return sorted(p.name for p in (root / rows[v["seq"]]["evidence"]).iterdir())

        assert files(reject) == sorted([IMAGE, HEATMAP, ANOMALY_MAP, CLOUD, META])
        assert files(degraded) == sorted([IMAGE, CLOUD, META])
        assert files(unmatched) == [META]
        ev = read_evidence(root, rows[reject["seq"]]["evidence"])
        assert np.array_equal(ev.image_rgb(), cell_frame(20).rgb)
        assert ev.xyz().tobytes() == cell_frame(20).xyz.astype(np.float32).tobytes()  # full resolution, bit for bit
        assert (ev.meta["seq"], ev.meta["decision"], ev.meta["stamp"]) == (int(reject["seq"]), "reject",
                                                                           reject["stamp"])
        heat = ros.wait_for("the reject's ~/heatmap", lambda: next(
            (m for _, m in ros.received["heatmap"] if stamp_text(m.header) == reject["stamp"]), None))
        assert np.array_equal(ev.heatmap_rgb(), image_to_array(heat)[..., ::-1])  # the pixels ~/heatmap published

        # retention: a limit below one part keeps the newest alone; the 5 older parts go, oldest first, counted
        assert ros.set_parameter("evidence.max_bytes", 1) == (True, "")
        newest = send(ros, 23)
        status = evidence_status(ros, lambda v: v["written"] == "6" and v["deleted"] == "5", "retention")
        assert status["retained_parts"] == "1" and int(status["deleted_bytes"]) > 0
        left = [p.relative_to(root).as_posix() for p in root.glob("*/*/*")]
        assert left == [audit_rows(node.audit_db)[-1]["evidence"]] and newest["decision"] == "reject"


def test_an_evidence_root_that_cannot_be_written_costs_no_decision(ros, rgbd_model, tmp_path):
    root = tmp_path / "evidence"
    root.write_text("a file where the evidence directory should be")
    params = {"checkpoint": rgbd_model["checkpoint"], "threshold": 0.0, "evidence.dir": str(root)}
    with node_running(ros, tmp_path, params, (ros.image_pub, ros.points_pub)) as node:
        results = [send(ros, 30 + i) for i in range(4)]  # every one answered, in spite of the evidence
        assert [v["decision"] for v in results] == ["reject"] * 4
        status = evidence_status(ros, lambda v: v["failing"] == "true", "the evidence failure")
        assert status["_level"] == DiagnosticStatus.WARN and "not written" in status["last_error"]
        status = evidence_status(ros, lambda v: int(v["failed"]) + int(v["dropped"]) == 4 and v["queued"] == "0",
                                 "every part accounted for")
        rows = check_audit_has(node.audit_db, results)
        # a row names a folder only when the writer was asked for it (then it failed: counted); the others say none
        assert sum(r["evidence"] is not None for r in rows) == int(status["failed"]) >= 1
    assert root.read_text().startswith("a file")
