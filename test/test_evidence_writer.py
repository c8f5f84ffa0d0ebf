"""The node's evidence writer thread (cmdr_ros/ros/node/evidence_writer.py) without DDS: which parts are kept, what
the row says, a full queue, a failing root and its recovery, retention, the /diagnostics status."""
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header

from cmdr_ros.evidence import read_evidence
from cmdr_ros.judge import Verdict
from cmdr_ros.ros.conversions.frames import Frame
from cmdr_ros.ros.conversions.images import array_to_image
from cmdr_ros.ros.node.evidence_writer import (QUEUE, EvidenceWriter, PassSampler, evidence_arrays,
                                               evidence_status)

NODE, RUN = "/cell/cmdr_inspection", "run1"
PARAMS = {"evidence.passes": 0.0, "evidence.max_bytes": 0, "output.heatmap_alpha": 0.5, "output.heatmap_max": 0.0}


def frame(seed: int = 0, size: int = 32) -> Frame:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(size, size, 3)).astype(np.float32)
    return Frame(header=None, rgb=rng.integers(0, 256, (size, size, 3), dtype=np.uint8), xyz=xyz,
                 points=xyz.reshape(-1, 3), alignment="aligned")


def judged(decision: str, size: int = 32) -> Verdict:
    pred = SimpleNamespace(anomaly_map=np.linspace(0, 2, size * size, dtype=np.float32).reshape(size, size),
                           valid_mask=np.ones((size, size), bool), score=2.0)
    return Verdict(True, decision, 1.0, score=2.0 if decision == "reject" else 0.5, prediction=pred)


NOT_JUDGED = Verdict(False, "reject", 1.0, kind="timeout", reason="too slow")


def row(seq: int, decision: str = "reject") -> dict:
    return {"decided_at": 1_796_601_600.0 + seq, "node": NODE, "run_id": RUN, "seq": seq, "decision": decision,
            "evidence": None, "evidence_root": None}


class Writer:
    """An ``EvidenceWriter`` with parameters in a dict and its warnings collected; ``hold`` stops the writer thread
    at the start of its next part until ``release``."""

    def __init__(self, root, retry_s: float = 3600.0, **params):
        self.params, self.warnings = {**PARAMS, **params}, []
        self.held, self.entered, self.gate = False, threading.Event(), threading.Event()
        self.w = EvidenceWriter(str(root), "nfs://plant/evidence", NODE, self.param,
                                lambda kind, msg, level="warning": self.warnings.append(msg), retry_s=retry_s)

    def param(self, name):
        if name == "output.heatmap_alpha" and self.held:  # read by the writer thread as a part's write begins
            self.entered.set()
            self.gate.wait()
        return self.params[name]

    def hold(self):
        self.held, self.gate = True, threading.Event()
        self.entered.clear()

    def release(self):
        self.held = False
        self.gate.set()

    def done(self):
        assert self.w.close(30) == 0
        return self.w.health()


def test_rejects_and_not_judged_parts_are_kept_and_the_row_names_the_folder(tmp_path):
    wr = Writer(tmp_path)
    r1, r2, r3 = row(1), row(2, "pass"), row(3)
    assert wr.w.submit(r1, judged("reject"), frame()) == "cell__cmdr_inspection/2026-12-07/run1-00000001"
    assert wr.w.submit(r2, judged("pass"), frame()) is None  # evidence.passes 0: no pass kept
    assert wr.w.submit(r3, NOT_JUDGED, None) is not None  # not judged, no frame: its meta alone
    h = wr.done()
    assert (h["written"], h["dropped"], h["failed"]) == (2, 0, 0)
    assert (r1["evidence"], r1["evidence_root"]) == ("cell__cmdr_inspection/2026-12-07/run1-00000001",
                                                     "nfs://plant/evidence")
    assert r2["evidence"] is None and r2["evidence_root"] is None
    ev = read_evidence(tmp_path, r1["evidence"])
    assert np.array_equal(ev.image_rgb(), frame().rgb) and ev.xyz().tobytes() == frame().xyz.tobytes()
    assert ev.heatmap_rgb().shape == (32, 32, 3) and ev.anomaly_map().max() == pytest.approx(2.0)
    assert ev.meta["decision"] == "reject" and ev.meta["seq"] == 1
    ev3 = read_evidence(tmp_path, r3["evidence"])
    assert (ev3.image, ev3.heatmap, ev3.cloud) == (None, None, None) and ev3.meta["seq"] == 3
    assert h["bytes"] == ev.nbytes + ev3.nbytes


def test_the_heatmap_already_drawn_for_the_topic_is_kept_not_drawn_again(tmp_path):
    wr = Writer(tmp_path)
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[..., 0] = 200  # blue: no overlay of the anomaly map draws this
    r = row(1)
    wr.w.submit(r, judged("reject"), frame(), array_to_image(bgr, "bgr8", Header()))
    r2 = row(2)
    wr.w.submit(r2, judged("reject"), frame())  # no ~/heatmap drawn (not subscribed): drawn on the writer thread
    wr.done()
    assert np.array_equal(read_evidence(tmp_path, r["evidence"]).heatmap_rgb(), bgr[..., ::-1])
    drawn = read_evidence(tmp_path, r2["evidence"]).heatmap_rgb()
    assert drawn.shape == (32, 32, 3) and not np.array_equal(drawn, bgr[..., ::-1])


def test_the_pass_sample_is_even_and_deterministic():
    for f, kept in ((0.0, []), (1.0, list(range(1, 11))), (0.25, [4, 8]), (0.5, [2, 4, 6, 8, 10]),
                    (0.3, [4, 7, 10])):
        s = PassSampler()
        assert [n for n in range(1, 11) if s.keep(f)] == kept, f


def test_passes_are_sampled_and_rejects_do_not_count(tmp_path):
    wr = Writer(tmp_path, **{"evidence.passes": 0.5})
    kept = [wr.w.submit(row(seq, d), judged(d), frame()) is not None
            for seq, d in enumerate(["pass", "reject", "pass", "pass", "pass"], 1)]
    assert kept == [False, True, True, False, True]
    assert wr.done()["written"] == 3


def test_a_full_queue_drops_the_part_and_the_row_says_so(tmp_path):
    wr = Writer(tmp_path)
    wr.hold()
    first = row(1)
    wr.w.submit(first, judged("reject"), frame())
    assert wr.entered.wait(30)  # the writer holds part 1: QUEUE more fit
    rows = [row(seq) for seq in range(2, QUEUE + 3)]
    got = [wr.w.submit(r, judged("reject"), frame()) for r in rows]
    assert all(got[:QUEUE]) and got[QUEUE] is None and rows[-1]["evidence"] is None
    assert wr.w.health()["dropped"] == 1 and "already wait" in wr.warnings[-1]
    status = evidence_status(wr.w.health(), name="n: evidence", hw_id="n", window=60.0)
    assert status.level == DiagnosticStatus.WARN and "not kept" in status.message
    wr.release()
    h = wr.done()
    assert (h["written"], h["dropped"]) == (QUEUE + 1, 1)
    assert sorted(p.name for p in tmp_path.glob("*/*/*")) == [f"run1-{s:08d}" for s in range(1, QUEUE + 2)]


def test_a_failing_root_is_counted_shown_and_probed_until_it_is_back(tmp_path):
    root = tmp_path / "evidence"
    root.write_text("not a directory")
    wr = Writer(root, retry_s=3600.0)
    r1 = row(1)
    wr.w.submit(r1, judged("reject"), frame())
    wait_for(lambda: wr.w.health()["failing"])
    h = wr.w.health()
    assert h["failed"] == 1 and "not written" in h["last_error"] and r1["evidence"]  # it was asked for
    status = evidence_status(h, name="n: evidence", hw_id="n", window=60.0)
    assert status.level == DiagnosticStatus.WARN and status.message.startswith("failing")
    r2 = row(2)
    assert wr.w.submit(r2, judged("reject"), frame()) is None and r2["evidence"] is None  # no probe due yet
    assert wr.w.health()["dropped"] == 1
    wr.w.retry_s = 0.0  # the next part is a probe
    root.unlink()  # the root is back
    r3 = row(3)
    assert wr.w.submit(r3, judged("reject"), frame()) is not None
    wait_for(lambda: wr.w.health()["written"] == 1)
    h = wr.done()
    assert not h["failing"] and (h["failed"], h["dropped"]) == (1, 1)
    assert read_evidence(root, r3["evidence"]).meta["seq"] == 3
    assert evidence_status(h, name="n: evidence", hw_id="n", window=0.0).level == DiagnosticStatus.OK


def test_retention_deletes_the_oldest_and_counts(tmp_path):
    wr = Writer(tmp_path)
    r1 = row(1)
    wr.w.submit(r1, judged("reject"), frame())
    wait_for(lambda: wr.w.health()["written"] == 1)
    wr.params["evidence.max_bytes"] = wr.w.health()["bytes"] + 1  # read per part: one part fits
    for seq in (2, 3):
        wr.w.submit(row(seq), judged("reject"), frame(seq))
        wait_for(lambda: wr.w.health()["written"] == seq)
    h = wr.done()
    assert h["deleted"] == 2 and h["retained_parts"] == 1 and h["deleted_bytes"] > 0
    assert [p.name for p in tmp_path.glob("*/*/*")] == ["run1-00000003"]


def test_a_row_that_cannot_name_a_folder_costs_nothing_but_a_count(tmp_path):
    wr = Writer(tmp_path)
    bad = {**row(1), "seq": None}
    assert wr.w.submit(bad, judged("reject"), frame()) is None and bad["evidence"] is None
    h = wr.done()
    assert (h["failed"], h["written"], h["failing"]) == (1, 0, False) and "decision None" in h["last_error"]


def test_arrays_of_a_scan_and_of_a_2d_frame():
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    scan = Frame(header=None, points=pts, alignment="scan", cloud_shape=(1, 50))
    assert set(evidence_arrays(NOT_JUDGED, scan, 0.5, 0.0)) == {"xyz"}
    assert evidence_arrays(NOT_JUDGED, scan, 0.5, 0.0)["xyz"] is pts
    flat = Frame(header=None, rgb=frame().rgb)
    assert set(evidence_arrays(judged("reject"), flat, 0.5, 0.0)) == {"image", "heatmap", "anomaly_map"}
    assert evidence_arrays(NOT_JUDGED, None, 0.5, 0.0) == {}


def test_status_when_off():
    s = evidence_status(None, name="n: evidence", hw_id="n", window=60.0)
    assert s.level == DiagnosticStatus.OK and "off" in s.message


def wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    pytest.fail("timed out")
