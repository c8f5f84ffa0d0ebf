"""Bag -> dataset: ``bag_to_dataset`` writes a recording's synchronized image/cloud sets as samples of an MVTec 3D-AD
style class folder, aligned as the node aligns them; ``bag_to_scans`` writes a recorded profilometer topic as a
class of unorganized scans (``cmdr_ros.data.scans`` layout), one scan per cloud, in the sensor's order."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cmdr_ros import CmdrError
from cmdr_ros.ros.bags.read import check_type, connections, message_class, open_bag
from cmdr_ros.ros.bags.tf import recorded_tf
from cmdr_ros.ros.stamps import stamp_ns
from cmdr_ros.ros.conversions.frames import mode_of
from cmdr_ros.ros.topics import CAMERA, INPUT_TYPES, PROFILER, RECORDED, type_name


def bag_to_dataset(bag: str | Path, out: str | Path, split: str = "train", defect: str = "good",
                   image_topic: str | None = CAMERA["image"], points_topic: str | None = CAMERA["points"],
                   info_topic: str | None = CAMERA["camera_info"], slop: float | None = None, start_index: int = 0,
                   params: dict[str, Any] | None = None) -> int:
    """Write the synchronized image/cloud sets of a recorded bag as samples of an MVTec 3D-AD style class folder
    (``out/<split>/<defect>/{rgb,xyz}/NNN``), so ``cmdr train`` can learn from recordings of good parts.

    Clouds go through the node's own alignment (``FrameJudge.assemble`` with the node's ``params``: pixel-aligned,
    projected with the bag's camera_info and its recorded /tf and /tf_static (``use_tf``) or ``extrinsics``, or
    rasterized with ``raster_resolution``), so the model is trained on exactly what the node will see; a frame larger
    than the training data is written at the size the node brings it to before background removal
    (``frame_size.fit_frame``). ``None`` leaves a topic out (3D-only: no image; 2D-only: no points). A set that cannot
    be aligned is left out with a warning. Returns the number of samples written.
    """
    import logging

    from rclpy.serialization import deserialize_message

    from cmdr_ros.data.frame_size import fit_frame
    from cmdr_ros.data.mvtec3d import write_sample
    from cmdr_ros.ros.node.frame_judge import FrameJudge
    from cmdr_ros.ros.node.parameters import node_params
    from cmdr_ros.ros.node.sync import ApproximateTimePolicy

    params = node_params(params, {"sync.slop": slop})
    inputs = [(k, t) for k, t in (("image", image_topic), ("points", points_topic)) if t]
    if not inputs:
        raise CmdrError("bag to-dataset: give an image topic, a points topic or both")
    mode = mode_of([k for k, _ in inputs])
    aligner = FrameJudge.aligner(mode, params)
    bag = Path(bag)
    sets: list[tuple[Any, ...]] = []
    infos: list[Any] = []
    written = skipped = 0
    with open_bag(bag) as reader:
        aligner.tf_lookup = recorded_tf(reader, bag, params)
        conns = connections(reader, bag, [t for _, t in inputs])
        if info_topic and info_topic in reader.topics:
            conns += connections(reader, bag, [info_topic])
        classes = {c.topic: message_class(c.msgtype) for c in conns}
        index = {t: i for i, (_, t) in enumerate(inputs)}
        policy = ApproximateTimePolicy(len(inputs), int(params["sync.queue_size"]), float(params["sync.slop"]),
                                       lambda *msgs: sets.append(msgs))
        for conn, _, raw in reader.messages(connections=conns):
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            if conn.topic == info_topic:
                infos.append(msg)
                continue
            policy.add(index[conn.topic], msg)
            while sets:
                msgs = dict(zip([k for k, _ in inputs], sets.pop(0)))
                try:
                    frame = aligner.assemble(msgs, infos[-1] if infos else None)
                except CmdrError as e:
                    skipped += 1
                    logging.getLogger(__name__).warning("left out the set stamped %s: %s",
                                                        stamp_ns(next(iter(msgs.values())).header), e)
                    continue
                write_sample(out, split, defect, f"{start_index + written:03d}", *fit_frame(frame.rgb, frame.xyz))
                written += 1
    if not written:
        raise CmdrError(f"{bag}: no {' + '.join(t for _, t in inputs)} set matched within the slop of "
                        f"{params['sync.slop']:g} s" + (f" ({skipped} could not be aligned)" if skipped else ""))
    return written


def bag_to_scans(bag: str | Path, out: str | Path, split: str = "train", defect: str = "good",
                 points_topic: str = PROFILER["points"], start_index: int = 0,
                 params: dict[str, Any] | None = None, gt_topic: str = RECORDED["gt_points"]) -> int:
    """Write every cloud of a recorded profilometer topic as one scan of a class of unorganized scans
    (``out/<split>/<defect>/points/NNN.npy``, Nx3 float32, for ``cmdr train`` of a "chunks" model), in log-time
    order. A cloud's points keep the sensor's order (an organized cloud: row-major), decoded as the node decodes
    them (``frames.assemble_scan``); its invalid points (non-finite, or the all-zero marker of an organized cloud)
    are left out, as the node leaves them out of the chunks. A cloud that cannot be decoded, or has no valid
    point, is left out with a warning. When the bag has per-point ground truth (``gt_topic``, default
    ``/cmdr/gt_points``, as ``bag_from_dataset`` writes a scan class: ``record.scan_records``) for a cloud's stamp,
    its labels of the kept points go to ``gt/NNN.npy`` beside it, so a recorded test split evaluates with
    ``cmdr eval``. Returns the number of scans written."""
    import logging

    import numpy as np
    from rclpy.serialization import deserialize_message

    from cmdr_ros.ros.bags.evaluate import read_aux
    from cmdr_ros.ros.node.frame_judge import FrameJudge
    from cmdr_ros.ros.node.parameters import node_params

    aligner = FrameJudge.aligner("3d", node_params(params, {}), kind="chunks")
    folder = Path(out) / split / defect / "points"
    gt_folder = folder.parent / "gt"
    log = logging.getLogger(__name__)
    written = skipped = 0
    bag = Path(bag)
    with open_bag(bag) as reader:
        conns = connections(reader, bag, [points_topic])
        check_type(reader, bag, points_topic, type_name(INPUT_TYPES["points"]))
        cls = message_class(reader.topics[points_topic].msgtype)
        gts = read_aux(reader, {"gt_points": gt_topic} if gt_topic in reader.topics else {}).gts
        for _, _, raw in reader.messages(connections=conns):
            msg = deserialize_message(bytes(raw), cls)
            try:
                points = aligner.assemble({"points": msg}).points
            except CmdrError as e:
                points, why = None, str(e)
            labels = gts.nearest(stamp_ns(msg.header), within=0)
            if points is not None:
                kept = np.isfinite(points).all(axis=1)
                if labels is not None and len(labels) != len(points):
                    log.warning("the ground truth stamped %s has %d labels for %d points: not written",
                                stamp_ns(msg.header), len(labels), len(points))
                    labels = None
                points, labels = points[kept], None if labels is None else labels[kept]
                why = "no valid point"
            if points is None or not len(points):
                skipped += 1
                log.warning("left out the cloud stamped %s: %s", stamp_ns(msg.header), why)
                continue
            name = folder / f"{start_index + written:03d}.npy"
            if name.exists():
                raise CmdrError(f"{name}: already exists; give --start-index to append to a class folder")
            folder.mkdir(parents=True, exist_ok=True)
            np.save(name, np.ascontiguousarray(points, dtype=np.float32))
            if labels is not None:
                gt_folder.mkdir(parents=True, exist_ok=True)
                np.save(gt_folder / name.name, labels)
            written += 1
    if not written:
        raise CmdrError(f"{bag}: no scan on {points_topic}" + (f" ({skipped} could not be decoded)" if skipped else ""))
    return written
