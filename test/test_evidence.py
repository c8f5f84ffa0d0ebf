"""The evidence folder of a decision (cmdr_ros/evidence.py): layout, round trip, retention, bad inputs."""
import json
import os
import time

import numpy as np
import pytest

from cmdr_ros.evidence import (ANOMALY_MAP, ANOMALY_MAP_NPY, CLOUD, HEATMAP, IMAGE, META, META_KEYS, EvidenceError,
                               Retention, meta_of, part_folder, read_evidence, write_evidence)

DAY = 1_796_601_600.0  # 2026-12-07 00:00:00 UTC


def arrays(h: int = 48, w: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    heat = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    amap = rng.random((h, w), dtype=np.float32)
    xyz = rng.normal(size=(h, w, 3)).astype(np.float32)
    xyz[:3] = np.nan  # invalid points are kept as received
    return image, heat, amap, xyz


def meta(seq: int = 1, **kw):
    return {"node": "/cell/cmdr_inspection", "run_id": "r1", "seq": seq, "stamp": "12.000000005",
            "decision": "reject", "judged": True, "score": 1.5, **kw}


def test_part_folder_layout():
    assert part_folder("/cell/cmdr_inspection", DAY + 3600, "r1a2", 7) == \
        "cell__cmdr_inspection/2026-12-07/r1a2-00000007"
    assert part_folder("cmdr_inspection", DAY - 1, "x", 123456789) == "cmdr_inspection/2026-12-06/x-123456789"
    for bad in ("", "a/b", "..", ".hidden"):
        with pytest.raises(EvidenceError):
            part_folder("/n", DAY, bad, 1)
    with pytest.raises(EvidenceError):
        part_folder("/", DAY, "r", 1)


def test_round_trip_is_bit_exact(tmp_path):
    image, heat, amap, xyz = arrays()
    rel = part_folder("/cell/cmdr_inspection", DAY, "r1", 1)
    n = write_evidence(tmp_path, rel, image=image, heatmap=heat, anomaly_map=amap, xyz=xyz,
                       meta={**meta(), "written_at": 5.0})
    folder = tmp_path / rel
    assert sorted(os.listdir(folder)) == sorted([IMAGE, HEATMAP, ANOMALY_MAP, CLOUD, META])
    assert n == sum(f.stat().st_size for f in folder.iterdir())
    assert os.listdir(folder.parent) == [folder.name]  # no temporary folder left
    ev = read_evidence(tmp_path, rel)
    assert ev.nbytes == n and ev.meta == {**meta(), "written_at": 5.0}
    assert np.array_equal(ev.image_rgb(), image) and np.array_equal(ev.heatmap_rgb(), heat)
    got_map, got_xyz = ev.anomaly_map(), ev.xyz()
    assert got_map.dtype == np.float32 and np.array_equal(got_map, amap)
    assert got_xyz.dtype == np.float32 and got_xyz.tobytes() == xyz.tobytes()  # NaNs included, bit for bit
    with np.load(folder / ANOMALY_MAP) as z:  # compressed: np.savez_compressed's format
        assert z.files == ["anomaly_map"] and z.zip.getinfo("anomaly_map.npy").compress_type == 8  # deflate


def test_an_older_folder_with_an_uncompressed_map_is_read(tmp_path):
    """Folders written before anomaly_map.npz hold anomaly_map.npy (np.save): read alike."""
    image, heat, amap, xyz = arrays(seed=3)
    rel = part_folder("/n", DAY, "r", 4)
    write_evidence(tmp_path, rel, image=image, meta=meta(4))
    np.save(tmp_path / rel / ANOMALY_MAP_NPY, amap)
    ev = read_evidence(tmp_path, rel)
    assert ev.anomaly_map_path.name == ANOMALY_MAP_NPY
    got = ev.anomaly_map()
    assert got.dtype == np.float32 and np.array_equal(got, amap)


def test_a_scan_cloud_and_absent_files(tmp_path):
    """A scan's Nx3 cloud, no image nor map (3d mode, not judged): only what was given is written."""
    pts = np.random.default_rng(1).normal(size=(1000, 3)).astype(np.float32)
    rel = part_folder("/n", DAY, "r", 2)
    write_evidence(tmp_path, rel, xyz=pts, meta=meta(2, judged=False, error="timeout"))
    ev = read_evidence(tmp_path, rel)
    assert (ev.image, ev.heatmap, ev.anomaly_map_path) == (None, None, None)
    assert ev.xyz().tobytes() == pts.tobytes() and ev.xyz().shape == (1000, 3)
    assert ev.meta["error"] == "timeout" and ev.meta["written_at"] > DAY
    rel2 = part_folder("/n", DAY, "r", 3)
    write_evidence(tmp_path, rel2, image=arrays()[0], meta=meta(3))  # 2d mode: no cloud
    assert read_evidence(tmp_path, rel2).cloud is None


def test_meta_of_an_audit_row():
    row = {k: f"v{k}" for k in META_KEYS} | {"latency_ms": 3.0, "evidence": "x"}
    assert meta_of(row) == {k: f"v{k}" for k in META_KEYS}
    assert json.dumps(meta_of({}))  # every key, empty where the row has none


def test_bad_inputs_raise_evidence_error_and_leave_nothing(tmp_path):
    image, heat, amap, xyz = arrays()
    rel = part_folder("/n", DAY, "r", 1)
    bad = [dict(image=image.astype(np.float32)), dict(heatmap=image[..., 0]), dict(xyz=xyz.astype(np.float64)),
           dict(xyz=xyz[..., :2])]
    for kw in bad:
        with pytest.raises(EvidenceError):
            write_evidence(tmp_path, rel, meta=meta(), **kw)
    assert not (tmp_path / rel).exists()
    for escape in ("../outside", "/abs/path", "n/./x", ""):
        with pytest.raises(EvidenceError, match="relative to the evidence root"):
            write_evidence(tmp_path, escape, meta=meta())
        with pytest.raises(EvidenceError):
            read_evidence(tmp_path, escape)
    with pytest.raises(EvidenceError, match="meta.json"):
        read_evidence(tmp_path, "n/2026-12-07/absent-00000001")
    write_evidence(tmp_path, rel, meta=meta())
    with pytest.raises(EvidenceError, match="already exists"):  # a part is written once
        write_evidence(tmp_path, rel, meta=meta())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_root_is_a_clear_error(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(EvidenceError, match="not written: PermissionError"):
            write_evidence(root, part_folder("/n", DAY, "r", 1), image=arrays()[0], meta=meta())
    finally:
        root.chmod(0o700)
    assert list(root.iterdir()) == []


def test_a_root_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvidenceError, match="not written"):
        write_evidence(tmp_path / "file", part_folder("/n", DAY, "r", 1), meta=meta())


def write_parts(root, node: str, seqs, size: int = 20_000) -> dict[str, int]:
    """Parts of ``size`` random (incompressible) cloud bytes, each written after the previous (ages in order), each
    decided on its own day."""
    out = {}
    for seq in seqs:
        rel = part_folder(node, DAY + seq * 86400, "r", seq)
        pts = np.random.default_rng(seq).random((size // 12, 3), dtype=np.float32)
        out[rel] = write_evidence(root, rel, xyz=pts, meta=meta(seq))
        os.utime(root / rel / META, (DAY + seq, DAY + seq))  # the age Retention reads, not the test's speed
    return out


def test_retention_deletes_the_oldest_parts_first_and_counts(tmp_path):
    sizes = write_parts(tmp_path, "/n", range(1, 4))
    per = max(sizes.values())
    ret = Retention(tmp_path, max_bytes=4 * per)
    assert (ret.parts, ret.total) == (3, sum(sizes.values()))  # found on disk
    new = write_parts(tmp_path, "/n", range(4, 7))
    deleted = [ret.add(rel, n) for rel, n in new.items()]
    assert deleted[0] == (0, 0)  # 4 parts fit
    assert sum(p for p, _ in deleted) == 2 and (ret.deleted_parts, ret.parts) == (2, 4)
    assert ret.deleted_bytes == sum(sizes[part_folder("/n", DAY + s * 86400, "r", s)] for s in (1, 2))
    left = sorted(p.name for p in (tmp_path / "n").glob("*/*"))
    assert left == [f"r-{s:08d}" for s in range(3, 7)]
    assert ret.total <= ret.max_bytes


def test_retention_scans_oldest_by_age_not_name_and_cleans_empty_folders(tmp_path):
    sizes = write_parts(tmp_path, "/n", [1, 2])
    rel_1, rel_2 = list(sizes)
    os.utime(tmp_path / rel_1 / META, (DAY + 9, DAY + 9))  # part 1 written after part 2
    ret = Retention(tmp_path, max_bytes=1)
    assert ret.enforce() == (1, sizes[rel_2]) and (tmp_path / rel_1).is_dir()
    assert not (tmp_path / rel_2).parent.exists()  # its day folder went with it (each part has its own day here)


def test_retention_keeps_the_newest_part_and_zero_is_no_limit(tmp_path):
    sizes = write_parts(tmp_path, "/n", [1, 2, 3])
    assert Retention(tmp_path, max_bytes=0).enforce() == (0, 0)
    ret = Retention(tmp_path, max_bytes=1)
    assert ret.enforce()[0] == 2 and ret.parts == 1 and (tmp_path / list(sizes)[-1]).is_dir()
    with pytest.raises(EvidenceError):
        Retention(tmp_path, max_bytes=-1)


def test_retention_of_one_node_leaves_the_others_alone(tmp_path):
    write_parts(tmp_path, "/a", [1, 2])
    theirs = write_parts(tmp_path, "/b", [3, 4])
    assert Retention(tmp_path, max_bytes=1, node="/a").enforce()[0] == 1
    assert all((tmp_path / rel).is_dir() for rel in theirs)
    assert Retention(tmp_path, max_bytes=1).parts == 3  # the whole root: a's newest and b's two


def test_retention_ignores_what_is_not_a_part_and_an_absent_root(tmp_path):
    assert Retention(tmp_path / "absent", 10).parts == 0
    (tmp_path / "n" / "2026-12-07" / ".r-00000001.tmp-1").mkdir(parents=True)  # a write in progress
    (tmp_path / "n" / "2026-12-07" / "notes").mkdir()
    (tmp_path / "README").write_text("evidence root")
    assert Retention(tmp_path, 10).parts == 0


def test_sizes_of_a_typical_part(tmp_path):
    """An 800x800 part: the cloud is stored at full resolution, compressed (random data: the worst case)."""
    image, heat, amap, xyz = arrays(800, 800)
    t0 = time.perf_counter()
    n = write_evidence(tmp_path, part_folder("/n", DAY, "r", 1), image=image, heatmap=heat, anomaly_map=amap,
                       xyz=xyz, meta=meta())
    ms = (time.perf_counter() - t0) * 1e3
    raw = image.nbytes + heat.nbytes + amap.nbytes + xyz.nbytes
    assert 0.5 * raw < n < 1.1 * raw  # random data does not compress: all of it is there, little overhead
    print(f"\nevidence of an 800x800 part (random data): {n / 1e6:.1f} MB in {ms:.0f} ms")
