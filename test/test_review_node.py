"""The review station end to end on what a real node kept (over DDS): its audit rows and evidence folders are the
station's decisions and pictures (found under the root the rows recorded), a reviewer's labels go to the same store,
the dashboard counts them, and ``cmdr dataset from-review`` makes a class folder of the labelled parts."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from std_msgs.msg import Header

from cmdr_ros.cli.main import main
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_rgb
from cmdr_ros.evidence import read_evidence
from cmdr_ros.review import auth, queries
from cmdr_ros.review.app import create_app
from cmdr_ros.review.db import ReviewDB
from cmdr_ros.ros.conversions import xyz_to_pointcloud2
from node_harness import cell_frame, check_audit_has, start_node, train_cell_model
from review_harness import PASSWORD, csrf_of, login

pytestmark = pytest.mark.slow
node_running = contextlib.contextmanager(start_node)


def test_what_the_node_kept_is_reviewed_and_becomes_a_data_set(ros, tmp_path, capsys):
    model = train_cell_model(tmp_path / "data", "rgbd", tmp_path / "rgbd.ckpt")
    root = tmp_path / "evidence"
    params = {"checkpoint": model["checkpoint"], "threshold": 0.0, "evidence.dir": str(root)}  # every part a reject
    with node_running(ros, tmp_path, params, (ros.image_pub, ros.points_pub)) as node:
        results = []
        for seed in (40, 41, 42):
            stamp = ros.next_stamp()
            part = cell_frame(seed)
            ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")))
            results.append(ros.result(stamp))
        assert [v["decision"] for v in results] == ["reject"] * 3
        # evidence is written off the decision path: wait until the node says all three folders are complete
        ros.diagnostics(lambda v: v.get("written") == "3", "3 evidence folders written", timeout=60,
                        name="cmdr_inspection: evidence")
        rows = check_audit_has(node.audit_db, results)
        audit_db = node.audit_db
    assert all(r["evidence"] and r["evidence_root"] == str(root) for r in rows)

    db = ReviewDB(audit_db)
    try:
        auth.add_user(db, "rita", "reviewer", PASSWORD)
        client = TestClient(create_app(db))  # no --evidence: the root the rows recorded, which exists here
        assert login(client, "rita").status_code == 200
        first, second = rows[0], rows[1]
        page = client.get(f"/part/{first['run_id']}/{first['seq']}")
        assert 'id="pic-image"' in page.text and 'id="pic-heatmap"' in page.text
        image = client.get(f"/part/{first['run_id']}/{first['seq']}/image.png")
        assert image.content == read_evidence(root, first["evidence"]).image.read_bytes()
        for row, label in ((first, "good"), (second, "defective")):
            r = client.post(f"/part/{row['run_id']}/{row['seq']}/label",
                            data={"label": label, "csrf": csrf_of(page.text)})
            assert r.status_code == 200 and 'id="saved"' in r.text
        cell, = queries.dashboard(db, queries.Filters())
        assert (cell["parts"], cell["rejects"], cell["reviewed_rejects"], cell["false_reject_rate"]) == (3, 3, 2, 0.5)
    finally:
        db.close()

    out = tmp_path / "reviewed"
    assert main(["dataset", "from-review", "--db", audit_db, "--out", str(out), "--validation", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == {"test/review": 1, "train/good": 1}
    good, = MVTec3DClass(out).samples("train")
    assert np.array_equal(load_rgb(good.rgb_path), cell_frame(40).rgb)
