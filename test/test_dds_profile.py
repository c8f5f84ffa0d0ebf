"""The Fast DDS profile cmdr processes use (cmdr_ros/ros/dds_profile.py): when it is set, and that Fast DDS loads it."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import namedtuple
from pathlib import Path

import pytest

from cmdr_ros.ros import dds_profile
from cmdr_ros.ros.dds_profile import PROFILE, SEGMENT_BYTES, use_large_message_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
NS = {"d": "http://www.eprosima.com"}


def test_set_when_nothing_else_is_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rmw in ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        env = {"RMW_IMPLEMENTATION": rmw} if rmw else {}
        note = use_large_message_profile(env, shm_dir=str(tmp_path))
        assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE) and str(PROFILE) in note


@pytest.mark.parametrize("env, says", [
    ({"FASTDDS_DEFAULT_PROFILES_FILE": "/cell/dds.xml"}, "/cell/dds.xml"),
    ({"FASTRTPS_DEFAULT_PROFILES_FILE": "/cell/old.xml"}, "/cell/old.xml"),
    ({"CMDR_FASTDDS_PROFILE": "off"}, "CMDR_FASTDDS_PROFILE=off"),
    ({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, "rmw_cyclonedds_cpp"),
    ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, the user's"),
    ({"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, "the user's"),
])
def test_the_users_settings_win(env, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = dict(env)
    note = use_large_message_profile(env, shm_dir=str(tmp_path))
    assert env == before and says in note


def test_builtin_transports_do_not_count_on_localhost(tmp_path, monkeypatch):
    """rmw_fastrtps ignores FASTDDS_BUILTIN_TRANSPORTS on a LOCALHOST range: the profile is set, and the note says so."""
    monkeypatch.chdir(tmp_path)
    env = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    note = use_large_message_profile(env, shm_dir=str(tmp_path))
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE) and "has no effect" in note


def test_a_profile_in_the_working_folder_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT_FASTDDS_PROFILES.xml").write_text("<dds/>")
    env: dict[str, str] = {}
    assert "working folder" in use_large_message_profile(env, shm_dir=str(tmp_path)) and env == {}


def test_not_set_without_shared_memory_room(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dds_profile.shutil, "disk_usage", lambda _: usage(64 * 2**20, 40 * 2**20, 24 * 2**20))
    env: dict[str, str] = {}
    note = use_large_message_profile(env, shm_dir=str(tmp_path))
    assert env == {} and "24 MB free" in note
    env = {}
    assert "not set" in use_large_message_profile(env, shm_dir=str(tmp_path / "absent")) and env == {}


def test_the_profile_file():
    """Shared memory with the segment the module states, UDP for other hosts, the default participant profile."""
    root = ET.parse(PROFILE).getroot()
    kinds = {d.findtext("d:transport_id", namespaces=NS): d for d in root.iterfind(".//d:transport_descriptor", NS)}
    shm = [d for d in kinds.values() if d.findtext("d:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1 and int(shm[0].findtext("d:segment_size", namespaces=NS)) == SEGMENT_BYTES
    assert any(d.findtext("d:type", namespaces=NS) == "UDPv4" for d in kinds.values())
    participant = root.find(".//d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind("d:rtps/d:userTransports/d:transport_id", NS)]
    assert sorted(used) == sorted(kinds)
    assert participant.findtext("d:rtps/d:useBuiltinTransports", namespaces=NS) == "false"


PROBE = """
import os, sys, time, rclpy
shm = sys.argv[1]
before = set(os.listdir(shm))
rclpy.init()
node = rclpy.create_node("cmdr_profile_probe")
sizes = [os.path.getsize(os.path.join(shm, f)) for f in set(os.listdir(shm)) - before
         if f.startswith("fastdds_") and not f.endswith("_el")]
node.destroy_node()
rclpy.shutdown()
print(max(sizes, default=0))
"""


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm: Fast DDS has no shared memory here")
@pytest.mark.parametrize("profile", ["on", "off"])
def test_fast_dds_loads_it(profile):
    """A participant started with the profile maps a shared-memory segment of its size (Fast DDS read the file:
    a file it cannot parse would leave the 512 KB default); without it, the default."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTDDS_DEFAULT_PROFILES_FILE",
                                                              "FASTRTPS_DEFAULT_PROFILES_FILE")}
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", CMDR_FASTDDS_PROFILE=profile)
    note = use_large_message_profile(env)
    if profile == "on" and "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        pytest.skip(f"this machine does not take the profile: {note}")
    out = subprocess.run([sys.executable, "-c", PROBE, "/dev/shm"], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    largest = int(out.stdout.split()[-1])
    if profile == "on":
        assert largest >= SEGMENT_BYTES, f"largest new segment {largest} bytes"
    else:
        assert 0 < largest < 2**20, f"largest new segment {largest} bytes"


def test_cmdr_dds_profile_prints_its_path(capsys):
    from cmdr_ros.cli.main import main

    assert main(["dds-profile"]) == 0
    assert capsys.readouterr().out.strip() == str(PROFILE) and PROFILE.is_file()
