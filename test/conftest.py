"""Shared pytest fixtures.

Real sensor data lives beside the repository at ``../shared/data`` (override with CMDR_SHARED_DATA);
tests that need it skip with a reason when it is absent.
"""
import os
from pathlib import Path

import pytest

from cmdr_ros.ros.dds_profile import use_large_message_profile

# Fast DDS as cmdr runs it: frames whole through shared memory, in this process (its publishers) and in the nodes and
# players it starts; set before any test creates a participant (Fast DDS reads its profiles once a process).
# CMDR_FASTDDS_PROFILE=off runs the suite on Fast DDS's defaults.
use_large_message_profile()

REPO_ROOT = Path(__file__).resolve().parents[1]

# `make test-fast` (the editing loop) leaves out what starts processes, servers or DDS, trains real models or asks the
# package registry: these modules whole, and in any module a test that uses a fixture of FULL_ONLY_FIXTURES.
FULL_ONLY_MODULES = {
    "test_node", "test_node_audit", "test_node_controller", "test_node_faults", "test_node_inputs", "test_node_onnx",
    "test_node_real", "test_node_scan", "test_node_sensors", "test_parity", "test_typed_decision",  # node processes
    "test_bags", "test_bag_tf", "test_bench",  # bag players, bench node over DDS
    "test_cli", "test_detector", "test_export", "test_extract_batch", "test_paper3d", "test_paper_preset",
    "test_heads", "test_background_speed", "test_checkpoint_integrity", "test_xyz_size",  # training, paper-size models
    "test_packaging", "test_constraints",  # colcon builds, the package registry
    "test_audit_cli", "test_audit_spool",  # PostgreSQL, killed writer processes
}
FULL_ONLY_FIXTURES = {"ros", "postgres_server", "postgres_url"}
SHARED_DATA = Path(os.environ.get("CMDR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CABLE_GLAND = SHARED_DATA / "mvtec3d_cable_gland_dev" / "cable_gland"
PCL_ORGANIZED = SHARED_DATA / "pcl_organized"


def pytest_collection_modifyitems(config, items):
    """Mark what the full suite alone runs ``full_only`` (``make test-fast`` deselects it)."""
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in FULL_ONLY_MODULES or \
                FULL_ONLY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full_only)


@pytest.fixture(scope="session", autouse=True)
def ros_log_dir(tmp_path_factory) -> Path:
    """ROS logs (and the audit store of nodes started in this process) go to a temporary folder, never ~/.ros."""
    path = tmp_path_factory.mktemp("ros_log")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ROS_LOG_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def cable_gland_dir() -> Path:
    if not (CABLE_GLAND / "train" / "good").is_dir():
        pytest.skip(f"real MVTec 3D-AD subset not found at {CABLE_GLAND} (set CMDR_SHARED_DATA)")
    return CABLE_GLAND


@pytest.fixture(scope="session")
def pcl_organized_dir() -> Path:
    if not PCL_ORGANIZED.is_dir():
        pytest.skip(f"PCL organized clouds not found at {PCL_ORGANIZED} (set CMDR_SHARED_DATA)")
    return PCL_ORGANIZED


@pytest.fixture(scope="session")
def preprocess_cache(tmp_path_factory) -> Path:
    """One preprocessing cache for the session: each real cloud's background removal runs once."""
    return tmp_path_factory.mktemp("preprocess_cache")


@pytest.fixture(scope="module")
def ros():
    """The test side of the node tests: an rclpy node on a ROS domain of this module's own (node_harness.py)."""
    from node_harness import RosSide, new_domain

    side = RosSide(new_domain())
    yield side
    side.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A PostgreSQL server of this test session (pg_server.py); skipped with the reason where none can start."""
    from pg_server import PostgresServer, why_unavailable

    why = why_unavailable()
    if why is not None:
        pytest.skip(why)
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database on the session's server for one test."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50] + f"_{os.getpid()}"
    return postgres_server.create_database(name)
