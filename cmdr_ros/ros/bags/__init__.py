"""rosbag2 files for the inspection node: dataset -> bag, bag -> DDS (play), bag -> detector (offline eval),
bag -> dataset.

Bags are read and written with ``rosbags`` (pure Python, sqlite3 and mcap storage) and every message goes
through ``rclpy.serialization``, so the bytes in a bag are exactly what the node sends and receives and the
decoding is the node's own (``conversions`` / ``frames.assemble_frame``). ``record`` writes bags (metadata
version 8, see there), ``read`` opens and reads them, ``play`` publishes them on DDS, ``evaluate`` judges them
offline and ``to_dataset`` turns a recording into a class folder (MVTec 3D-AD frames, or unorganized scans of a
laser profilometer for a "chunks" model), both resolving clouds in another frame through the bag's own /tf and
/tf_static (``tf``); topic names come from ``cmdr_ros.ros.topics``.
"""
from cmdr_ros.ros.bags.evaluate import eval_bag
from cmdr_ros.ros.bags.play import parse_remaps, play_bag, playback_qos, topic_qos
from cmdr_ros.ros.bags.read import message_class, open_bag, read_messages
from cmdr_ros.ros.bags.record import METADATA_VERSION, STORAGES, BagWriter, bag_from_dataset, offered_qos
from cmdr_ros.ros.bags.tf import TfTree, bag_tf_lookup, read_tf, tf_message
from cmdr_ros.ros.bags.to_dataset import bag_to_dataset, bag_to_scans

__all__ = ["METADATA_VERSION", "STORAGES", "BagWriter", "TfTree", "bag_from_dataset", "bag_tf_lookup",
           "bag_to_dataset", "bag_to_scans", "eval_bag", "message_class", "offered_qos", "open_bag", "parse_remaps",
           "play_bag", "playback_qos", "read_messages", "read_tf", "tf_message", "topic_qos"]
