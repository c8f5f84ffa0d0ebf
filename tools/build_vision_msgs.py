"""Build the vision_msgs messages cmdr_ros publishes (tools/vision_msgs) into a pip-only venv.

vision_msgs is not on PyPI; its rosdep key brings it in a ROS install. In a venv made of the PyPI ROS wheels
(requirements-ros.txt) this builds it from its .msg files with the rosidl chain that is on PyPI
(requirements-msgs.txt) and installs it into the venv itself (``sys.prefix``): the Python module into
site-packages, the C typesupport libraries into ``<venv>/lib`` (on the library path of every venv process: the
wheels' bootstrapper puts it there), the ament index and CMake files into ``<venv>/share``.

``make setup`` runs it only when ``import vision_msgs`` fails; by hand:
``.venv/bin/python tools/build_vision_msgs.py`` (``--force``: rebuild even when vision_msgs imports). Needs cmake, a
C/C++ compiler and the Python headers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "vision_msgs"
REQUIREMENTS = HERE.parent / "requirements-msgs.txt"
# where the wheels were built: their exported CMake targets name the builder's Python and numpy headers
BUILDER_PYTHON = "/opt/python/cp311-cp311"


def importable() -> bool:
    """vision_msgs with the messages cmdr_ros publishes imports in a fresh interpreter of this venv."""
    code = "from vision_msgs.msg import Classification, ObjectHypothesis, VisionInfo"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def fix_exported_include_dirs(prefix: Path) -> list[Path]:
    """Point the wheels' exported CMake targets at this venv's Python and numpy headers (they name the machine
    that built the wheels, and CMake refuses a target whose include directory does not exist)."""
    import numpy

    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    here = {f"{BUILDER_PYTHON}/include/{py}": sysconfig.get_paths()["include"],
            f"{BUILDER_PYTHON}/lib/{py}/site-packages/numpy/_core/include": numpy.get_include()}
    fixed = []
    for f in sorted((prefix / "share").glob("*/cmake/*.cmake")):
        text = f.read_text()
        if BUILDER_PYTHON not in text:
            continue
        for theirs, ours in here.items():
            text = text.replace(theirs, ours)
        f.write_text(text)
        fixed.append(f)
    return fixed


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def build(prefix: Path, jobs: int) -> None:
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        sys.exit(f"no Python.h in {sysconfig.get_paths()['include']}: install the Python development headers "
                 f"(Debian: python{sys.version_info.major}.{sys.version_info.minor}-dev)")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: vision_msgs is built with cmake and a C/C++ compiler (Debian: cmake g++)")
    run([sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)])
    for f in fix_exported_include_dirs(prefix):
        print(f"fixed the exported include directories of {f.relative_to(prefix)}")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), CMAKE_PREFIX_PATH=str(prefix))
    with tempfile.TemporaryDirectory(prefix="vision_msgs_build_") as tmp:
        src = Path(tmp, "src")
        shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns("COLCON_IGNORE"))
        run(["cmake", "-S", str(src), "-B", str(Path(tmp, "build")), f"-DCMAKE_INSTALL_PREFIX={prefix}",
             f"-DCMAKE_PREFIX_PATH={prefix}", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
             "-DCMAKE_BUILD_TYPE=Release"], env=env)
        run(["cmake", "--build", str(Path(tmp, "build")), "-j", str(jobs)], env=env)
        run(["cmake", "--install", str(Path(tmp, "build"))], env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when vision_msgs already imports")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    args = ap.parse_args()
    if importable() and not args.force:
        print("vision_msgs imports: nothing to build")
        return 0
    if sys.prefix == sys.base_prefix:
        sys.exit("run this with a venv's Python: it installs vision_msgs into that venv")
    t0 = time.monotonic()
    build(Path(sys.prefix), args.jobs)
    if not importable():
        sys.exit("vision_msgs was built and installed but does not import")
    print(f"vision_msgs built and installed into {sys.prefix} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
