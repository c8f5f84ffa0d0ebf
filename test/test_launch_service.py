"""The real launch files through the real ``launch.LaunchService``: two_cameras.launch.py starts two inspection node
processes (two namespaces, one audit store) that reach active, publish /diagnostics, judge a part each and stop
cleanly at SIGINT.

launch and launch_ros are the pure-Python sources of ../shared/ros_api/rolling (not on PyPI); their dependencies
osrf_pycommon, lark, PyYAML and ament_index_python come from PyPI (requirements-test.txt). launch_ros imports
``composition_interfaces.srv`` at import time (load_composable_nodes.py annotates with LoadNode.Request) and that
message package is not on PyPI: building it with the PyPI rosidl chain needs CMake, a compiler and its .srv files,
minutes per test session; so the test gives launch_ros a TEST-ONLY STAND-IN module with just those names, whose
classes refuse to be used (no composable node is launched here). The package is found through a temporary ament
index prefix laid out as `colcon build` installs it (setup.py data_files and setup.cfg's lib/cmdr_ros; test_packaging
checks that layout with a real colcon build): share/ament_index/resource_index/packages/cmdr_ros, share/cmdr_ros/
{launch,config} (this checkout's), lib/cmdr_ros/inspection_node (the console script). Skipped with the reason
where ../shared or a dependency is absent.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from bringup_model import tiny_2d_checkpoint  # noqa: E402
from node_harness import DEEP, audit_rows, cell_frame, values_of  # noqa: E402
from cmdr_ros.ros.conversions import array_to_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared/ros_api (CMDR_ROS_API, or beside CMDR_SHARED_DATA, overrides it: a checkout elsewhere)
ROS_API = Path(os.environ.get("CMDR_ROS_API") or (Path(os.environ["CMDR_SHARED_DATA"]).parent / "ros_api"
                                                   if os.environ.get("CMDR_SHARED_DATA")
                                                   else REPO.parent / "shared" / "ros_api")) / "rolling"
CAMERAS = ("cam_a", "cam_b")
NODE = "insp"  # node_name:=insp: the params file's /**/cmdr_inspection section must still reach the nodes

COMPOSITION_STAND_IN = '''"""TEST-ONLY STAND-IN for the ROS message package composition_interfaces (not on PyPI), written by
test/test_launch_service.py: just the names launch_ros needs at import time. Using them raises."""


class _Refused:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("composition_interfaces stand-in of test_launch_service.py: no composable nodes here")


class _Service:
    Request = Response = _Refused


class LoadNode(_Service):
    pass


class UnloadNode(_Service):
    pass


class ListNodes(_Service):
    pass
'''

RUNNER = '''import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

# as `ros2 launch PATH NAME:=VALUE...` (ros2launch.api.launch_a_launch_file) runs a launch file
path, args = sys.argv[1], [tuple(a.split(":=", 1)) for a in sys.argv[2:]]
service = LaunchService(argv=sys.argv[2:])
service.include_launch_description(LaunchDescription([
    IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=args)]))
sys.exit(service.run())
'''


def _why_not_runnable() -> str | None:
    for name in ("launch", "launch_ros"):
        if not (ROS_API / name / "__init__.py").is_file():
            return (f"{ROS_API / name} not found (../shared/ros_api: the launch and launch_ros sources; set "
                    "CMDR_ROS_API=FOLDER)")
    for module in ("osrf_pycommon", "lark", "yaml", "ament_index_python"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements-test.txt)"
    return None


def ament_prefix(root: Path) -> Path:
    """An install prefix holding cmdr_ros as colcon installs it (share/ and the lib/cmdr_ros executable)."""
    prefix = root / "install"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "cmdr_ros").touch()
    share = prefix / "share" / "cmdr_ros"
    share.mkdir()
    for folder in ("launch", "config"):
        (share / folder).symlink_to(REPO / folder)
    (share / "package.xml").symlink_to(REPO / "package.xml")
    exe = prefix / "lib" / "cmdr_ros" / "inspection_node"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!{sys.executable}\nimport sys\nfrom cmdr_ros.ros.node.inspection_node import main\nsys.exit(main())\n")
    exe.chmod(0o755)
    return prefix


def launch_path(root: Path) -> Path:
    """launch, launch_ros (symlinks into ../shared) and the composition_interfaces stand-in on one sys.path entry."""
    path = root / "pythonpath"
    (path / "composition_interfaces").mkdir(parents=True)
    for name in ("launch", "launch_ros"):
        (path / name).symlink_to(ROS_API / name)
    (path / "composition_interfaces" / "__init__.py").write_text('"""TEST-ONLY STAND-IN: see srv.py."""\n')
    (path / "composition_interfaces" / "srv.py").write_text(COMPOSITION_STAND_IN)
    return path


class Cameras:
    """The test side of the two cameras: an image publisher and a ~/result recorder per namespace."""

    def __init__(self, ros) -> None:
        self.ros, self.results = ros, {cam: [] for cam in CAMERAS}
        self.pubs = {cam: ros.node.create_publisher(Image, f"/{cam}/image", DEEP) for cam in CAMERAS}
        self.subs = [ros.node.create_subscription(DiagnosticArray, f"/{cam}/{NODE}/result",
                                                  lambda m, c=cam: self._record(c, m), DEEP) for cam in CAMERAS]

    def _record(self, cam: str, msg) -> None:
        with self.ros.cond:
            self.results[cam].append(values_of(msg))
            self.ros.cond.notify_all()

    def judged(self, cam: str, rgb, tries: int = 3) -> dict:
        """Publish a part until its result comes (a volatile writer not yet matched loses what it sends first)."""
        for _ in range(tries):
            stamp = self.ros.next_stamp()
            self.pubs[cam].publish(array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id="camera")))
            key = f"{stamp.sec}.{stamp.nanosec:09d}"
            with self.ros.cond:
                found = self.ros.cond.wait_for(
                    lambda: next((v for v in self.results[cam] if v.get("stamp") == key), None), 30)
            if found:
                return found
        pytest.fail(f"no ~/result from /{cam}/{NODE} in {tries} tries")

    def close(self) -> None:
        for pub in self.pubs.values():
            self.ros.node.destroy_publisher(pub)
        for sub in self.subs:
            self.ros.node.destroy_subscription(sub)


def _wait(pred, what: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not pred():
        assert proc.poll() is None, f"launch exited with {proc.returncode} before {what}\n{log.read_text()}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}\n{log.read_text()}"
        time.sleep(0.2)


def test_two_cameras_launch_through_the_real_launch_service(ros, tmp_path_factory, tmp_path):
    why = _why_not_runnable()
    if why is not None:
        pytest.skip(why)
    checkpoint = tiny_2d_checkpoint(tmp_path_factory)
    prefix, path = ament_prefix(tmp_path), launch_path(tmp_path)
    runner = tmp_path / "run_launch.py"
    runner.write_text(RUNNER)
    audit = tmp_path / "audit.db"
    import yaml

    cell = yaml.safe_load((REPO / "config" / "inspection.yaml").read_text())
    cell["/**/cmdr_inspection"]["ros__parameters"].update(threshold=2.5, warmup=False, diagnostics_period=0.5)
    params_file = tmp_path / "cell.yaml"
    params_file.write_text(yaml.safe_dump(cell))
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PYTHONPATH": os.pathsep.join([str(path), str(REPO)]),
           "ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_LOG_DIR": str(tmp_path / "ros_log"), "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "launch.log"
    ros.clear()
    cameras = Cameras(ros)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(runner), str(prefix / "share" / "cmdr_ros" / "launch" / "two_cameras.launch.py"),
             f"checkpoint:={checkpoint}", "device:=cpu", f"audit_database:={audit}", f"params_file:={params_file}",
             f"node_name:={NODE}", "log_level:=debug",
             "sigterm_timeout:=60"],  # the launch files' argument (docs/launch.md): 60 s, not launch's own 5

            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        for cam in CAMERAS:  # both nodes active, reported on /diagnostics under their namespaced names, with the
            # params file's threshold (its section for cmdr_inspection applied to the renamed node)
            d = ros.diagnostics(lambda v: v.get("state") == "active", f"{cam} active", timeout=180,
                                name=f"{cam}/{NODE}: node")
            assert d["threshold"] == "2.500000", d
        _wait(lambda: all(p.get_subscription_count() >= 1 for p in cameras.pubs.values()), "both image inputs",
              proc, log)
        rgb = cell_frame(11).rgb
        for cam in CAMERAS:
            v = cameras.judged(cam, rgb)
            assert v["judged"] == "true", v
    finally:
        cameras.close()
        t_stop = time.monotonic()
        if proc.poll() is None:  # Ctrl-C on `ros2 launch`: the terminal signals the whole process group (launch
            os.killpg(proc.pid, signal.SIGINT)  # itself then sends the nodes no SIGINT of its own)
        try:
            code = proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            code = -999
    stop_s = time.monotonic() - t_stop
    text = log.read_text(errors="replace")
    assert code == 0, text
    print(f"\nlaunch: both nodes judged a part; SIGINT to exit of launch and both nodes {stop_s:.1f} s")
    cmds = [line for line in text.splitlines() if "process started with pid" in line]
    assert len(cmds) == 2, text
    assert text.count("process has finished cleanly") == 2, text  # both nodes exited 0 at SIGINT
    rows = audit_rows(str(audit))  # one store, both nodes' decisions in it
    assert {r["node"] for r in rows} == {f"/{cam}/{NODE}" for cam in CAMERAS}, rows
    assert "[DEBUG]" in text  # log_level:=debug reached the nodes
