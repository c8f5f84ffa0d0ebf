"""What evidence costs per part (docs/evidence.md): a simulated cell part of SIZE x SIZE pixels (default 800: RGB
image, organized cloud with a sensor's noise) judged with a smooth anomaly map, written as the node's writer thread
writes it (``evidence_writer.evidence_arrays`` -> ``evidence.write_evidence``): the bytes of each file and the time
to make the arrays (the heatmap overlay) and to write the folder. Not a test: run it by hand.

    cd REPO && PYTHONPATH=$PWD:test python test/measure_evidence.py [PARTS] [SIZE] [DIR]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from cmdr_ros.data.synthetic import CellConfig, render_part
from cmdr_ros.evidence import FILES, part_folder, write_evidence
from cmdr_ros.judge import Verdict
from cmdr_ros.ros.conversions.frames import Frame
from cmdr_ros.ros.node.evidence_writer import evidence_arrays

def judged_part(seed: int, size: int) -> tuple[Verdict, Frame]:
    rng = np.random.default_rng(seed)
    part = render_part(rng, CellConfig(image_size=size), "tear" if seed % 2 else None)
    xyz = part.xyz.astype(np.float32)
    amap = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 25 * size / 800)  # a map is smooth
    pred = SimpleNamespace(anomaly_map=amap, valid_mask=np.isfinite(xyz).all(-1) & (xyz != 0).any(-1),
                           score=float(amap.max()))
    frame = Frame(header=None, rgb=part.rgb, xyz=xyz, points=xyz.reshape(-1, 3), alignment="aligned")
    return Verdict(True, "reject", float(amap.max()) * 0.9, score=float(amap.max()), prediction=pred), frame


def run(n: int, size: int, root: Path) -> None:
    sizes: dict[str, list[int]] = {name: [] for name in FILES}
    arrays_ms, write_ms = [], []
    for seq in range(1, n + 1):
        verdict, frame = judged_part(seq, size)
        t0 = time.perf_counter()
        arrays = evidence_arrays(verdict, frame, 0.5, 0.0)
        t1 = time.perf_counter()
        rel = part_folder("/cmdr_inspection", time.time(), "measure", seq)
        write_evidence(root, rel, meta={"seq": seq}, **arrays)
        t2 = time.perf_counter()
        arrays_ms.append((t1 - t0) * 1e3)
        write_ms.append((t2 - t1) * 1e3)
        for name in FILES:
            sizes[name].append((root / rel / name).stat().st_size)
    total = [sum(s[i] for s in sizes.values()) for i in range(n)]
    print(f"{n} parts of {size}x{size} in {root}")
    for name, s in sizes.items():
        print(f"  {name:16s} {statistics.median(s) / 1e6:7.3f} MB")
    print(f"  {'per part':16s} {statistics.median(total) / 1e6:7.3f} MB (min {min(total) / 1e6:.3f}, "
          f"max {max(total) / 1e6:.3f})")
    print(f"arrays (heatmap overlay): median {statistics.median(arrays_ms):.1f} ms; write: median "
          f"{statistics.median(write_ms):.1f} ms, max {max(write_ms):.1f} ms")


if __name__ == "__main__":
    parts = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 800
    run(parts, side, Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp(prefix="evidence_")))
