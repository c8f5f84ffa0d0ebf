"""``cmdr bag``: rosbag2 tools that need no ``ros2`` install.

* ``from-dataset DIR --out BAG``: an MVTec 3D-AD style class folder as a camera bag (image, organized cloud,
  camera_info, ground truth, sample names), playable by ``ros2 bag play`` (Humble and later); a class of
  unorganized scans (``cmdr_ros.data.scans``) as a laser profilometer's bag (one cloud per part, sample names);
* ``play BAG``: publish a bag on DDS with its recorded timing and QoS, optionally /clock (for machines without
  ``ros2 bag``);
* ``eval BAG --checkpoint M``: run a model over a bag offline, as the node would (a cloud in another frame than the
  image through the bag's own /tf and /tf_static, as the node's tf2 listener heard them; a results bag of the
  messages the node publishes, part ids included), and score it like ``cmdr eval``;
* ``to-dataset BAG --out DIR``: a recording of parts as samples of a class folder, to train on recorded good parts
  (``--scans``: a recorded profilometer topic as a class of unorganized scans, for a "chunks" model).

rclpy and rosbags are imported by the handlers only, so ``cmdr --help`` stays fast (the topic defaults come from
``cmdr_ros.ros.topics``, which imports message classes only).
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from cmdr_ros.data.mvtec3d import SPLITS
from cmdr_ros.ros.topics import CAMERA, MAPS, PART_ID, PROFILER, RECORDED

STORAGES = ("mcap", "sqlite3")  # cmdr_ros.ros.bags.record.STORAGES, repeated to keep rosbags out of parser building


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``cmdr bag``."""
    verbs = p.add_subparsers(dest="bag_verb", required=True, metavar="BAG_VERB")

    q = verbs.add_parser("from-dataset", help="write a dataset split as a camera bag (image, points, camera_info, "
                                              "gt_mask, sample names)")
    q.add_argument("data", metavar="DIR", help="MVTec 3D-AD style class folder, or a class of unorganized scans "
                                                f"(<split>/<defect>/points/NNN.npy: written on {PROFILER['points']})")
    q.add_argument("--out", required=True, metavar="BAG", help="bag folder to create (must not exist)")
    q.add_argument("--storage", choices=STORAGES, default="mcap",
                   help="mcap (default; Humble needs ros-humble-rosbag2-storage-mcap) or sqlite3")
    q.add_argument("--split", choices=SPLITS, default="test")
    q.add_argument("--rate", type=float, default=2.0, metavar="HZ", help="frames per second (default 2)")
    q.add_argument("--frame-id", default="camera", help="header.frame_id of every message (default camera)")
    q.set_defaults(func=run_from_dataset)

    q = verbs.add_parser("play", help="publish a bag on DDS with its recorded timing (no ros2 needed)")
    q.add_argument("bag", metavar="BAG", help="bag folder, or a .mcap / .db3 file")
    q.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
    q.add_argument("--loop", action="store_true", help="replay until Ctrl-C")
    q.add_argument("--topics", nargs="+", default=None, metavar="T", help="play only these topics")
    q.add_argument("--remap", nargs="+", default=None, metavar="OLD:=NEW", help="publish topic OLD as NEW")
    q.add_argument("--wait", type=float, default=1.0, metavar="S",
                   help="wait up to S seconds for every topic to have a subscriber before starting (default 1)")
    q.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                   help="publish /clock at the bag's time, HZ times a second (default 40, as ros2 bag play), for "
                        "nodes with use_sim_time; put it after BAG")
    q.set_defaults(func=run_play)

    q = verbs.add_parser("eval", help="run a model over a bag offline (as the node would) and score it")
    q.add_argument("bag", metavar="BAG", help="bag folder, or a .mcap / .db3 file")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--out", default=None, metavar="DIR", help="report folder (default BAG_eval beside the bag)")
    q.add_argument("--image-topic", default=RECORDED["image"])
    q.add_argument("--points-topic", default=None,
                   help=f"default {RECORDED['points']}; a \"chunks\" model (scans): {PROFILER['points']}")
    q.add_argument("--info-topic", default=RECORDED["camera_info"])
    q.add_argument("--gt-topic", default=None,
                   help=f"ground truth, metrics when present: masks (mono8; default {RECORDED['gt']}), or for a "
                        f"scan model the points with their labels as intensity (default {RECORDED['gt_points']})")
    q.add_argument("--sample-topic", default=RECORDED["sample"], help="std_msgs/String sample names '<defect>/<id>'")
    q.add_argument("--part-id-topic", default=PART_ID,
                   help=f"std_msgs/Header part ids (default {PART_ID}): each result carries the id whose stamp is "
                        "nearest its own within sync.slop, as on the node")
    q.add_argument("--params-file", default=None, metavar="YAML",
                   help="the node's parameters file (e.g. config/inspection.yaml): judge the bag exactly as the node "
                        "would (use_tf: the bag's /tf and /tf_static, extrinsics, raster_resolution, on_error, "
                        "min_coverage, max_range, threshold, sync)")
    q.add_argument("--slop", type=float, default=None,
                   help="max stamp difference (s) of a matched image/points set (default: sync.slop, 0.05)")
    q.add_argument("--threshold", type=float, default=None,
                   help="reject threshold (default: the params file's, else the checkpoint's)")
    q.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    q.add_argument("--weights-2d", default=None)
    q.add_argument("--weights-3d", default=None)
    q.add_argument("--maps", nargs="*", choices=MAPS, default=None, metavar="MAP",
                   help=f"the maps the results bag holds ({', '.join(MAPS)}; none: --maps alone), as the node's "
                        "output.<map> switches (default: the params file's, else all three, as the node)")
    q.add_argument("--no-images", action="store_true", help="skip the heatmap PNGs")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=run_eval)

    q = verbs.add_parser("to-dataset", help="write a recording's image/points sets as samples of a class folder "
                                            "(e.g. good parts to train on)")
    q.add_argument("bag", metavar="BAG", help="bag folder, or a .mcap / .db3 file")
    q.add_argument("--out", required=True, metavar="DIR", help="class folder to add the samples to")
    q.add_argument("--split", choices=SPLITS, default="train")
    q.add_argument("--defect", default="good", help="defect folder of the samples (default good)")
    q.add_argument("--image-topic", default=CAMERA["image"], help="'' for 3D-only recordings")
    q.add_argument("--points-topic", default=None,
                   help=f"'' for 2D-only recordings (default {CAMERA['points']}; --scans: {PROFILER['points']})")
    q.add_argument("--info-topic", default=CAMERA["camera_info"])
    q.add_argument("--params-file", default=None, metavar="YAML",
                   help="the node's parameters file: align clouds as the node would (extrinsics, raster_resolution)")
    q.add_argument("--slop", type=float, default=None,
                   help="max stamp difference (s) of a matched image/points set (default: sync.slop, 0.05)")
    q.add_argument("--start-index", type=int, default=0, help="first sample id (to append to a folder)")
    q.add_argument("--scans", action="store_true",
                   help="write each cloud of the points topic as an unorganized scan (<split>/<defect>/points/NNN.npy,"
                        " the sensor's order), for a \"chunks\" model; no image")
    q.set_defaults(func=run_to_dataset)


def run_from_dataset(args: argparse.Namespace) -> int:
    from cmdr_ros.ros.bags import METADATA_VERSION, bag_from_dataset

    s = bag_from_dataset(args.data, args.out, args.storage, args.split, args.rate, args.frame_id)
    print(f"wrote {s['frames']} frames ({args.split}, one every {s['period_s']:g} s) to {s['path']} "
          f"({s['storage']}, rosbag2 metadata version {METADATA_VERSION})")
    for topic, n in s["topics"].items():
        print(f"  {topic}: {n} messages")
    return 0


def run_play(args: argparse.Namespace) -> int:
    # Ctrl-C or a supervisor's SIGINT/SIGTERM ends the playback cleanly with its report, also when the process was
    # started with SIGINT ignored (as a shell's background jobs are: Python then raises no KeyboardInterrupt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    from cmdr_ros.ros.bags import play_bag

    play_bag(args.bag, args.rate, args.loop, args.topics, args.remap, wait=args.wait, clock=args.clock, report=print)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from cmdr_ros.model.checkpoint import load_checkpoint
    from cmdr_ros.ros.bags import eval_bag
    from cmdr_ros.ros.node.parameters import read_params_file

    bag = Path(args.bag)
    out = Path(args.out) if args.out else bag.with_name(f"{bag.stem if bag.is_file() else bag.name}_eval")
    params = read_params_file(args.params_file) if args.params_file else None
    threshold = args.threshold if args.threshold is not None else (params or {}).get("threshold", -1.0)
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d,
                               require_threshold=threshold < 0)
    rep = eval_bag(bag, detector, out, params=params, image_topic=args.image_topic, points_topic=args.points_topic,
                   info_topic=args.info_topic, gt_topic=args.gt_topic, sample_topic=args.sample_topic,
                   part_id_topic=args.part_id_topic, slop=args.slop, threshold=args.threshold, maps=args.maps,
                   checkpoint=args.checkpoint,
                   write_images=not args.no_images, progress=not args.quiet)
    if "table" in rep:
        print(rep["table"])
    print(f"tf: {rep['tf']}")
    orphans = sum(rep["unmatched"].values())
    print(f"{rep['frames']} frames ({rep['rejects']} rejected, {rep['not_judged']} not judged"
          + (f"; {orphans} unmatched inputs rejected" if orphans else "") + ") in "
          f"{rep['seconds']:.1f} s on {rep['device']}; results: {out / 'results.csv'}, {rep['results_bag']}"
          + (f", {out / 'metrics.json'}" if "table" in rep else ""))
    return 0


def run_to_dataset(args: argparse.Namespace) -> int:
    from cmdr_ros.ros.bags import bag_to_dataset, bag_to_scans
    from cmdr_ros.ros.node.parameters import read_params_file

    params = read_params_file(args.params_file) if args.params_file else None
    if args.scans:
        n = bag_to_scans(args.bag, args.out, args.split, args.defect, args.points_topic or PROFILER["points"],
                         args.start_index, params=params)
        print(f"wrote {n} scans to {Path(args.out) / args.split / args.defect / 'points'}")
        return 0
    points = CAMERA["points"] if args.points_topic is None else args.points_topic
    n = bag_to_dataset(args.bag, args.out, args.split, args.defect, args.image_topic or None,
                       points or None, args.info_topic or None, args.slop, args.start_index, params=params)
    print(f"wrote {n} samples to {Path(args.out) / args.split / args.defect}")
    return 0
