"""The package as a ROS 2 workspace gets it: package.xml's rosdep keys, and `colcon build` / `colcon test`.

Keys: every dependency package.xml names must be a rosdep key (test/rosdep_keys_subset.txt, copied from the list
of every key of humble/jazzy/kilted), else `rosdep install --from-paths src` fails. Which keys are needed is read
off the code itself: an AST walk of every import in cmdr_ros/ and launch/ (and test/ for the test dependencies),
each third-party module mapped to its rosdep key or, for what rosdep must not install (the CUDA stack, packages
without a key), to its pip requirement. A module in neither map fails the test until someone decides.

Workspace: the package sources are copied into a temporary colcon workspace, built (not symlinked), and the
installed executables are run with the install tree first on PYTHONPATH (asserted, so the repository's own
checkout cannot stand in for a broken install). Skipped where colcon is not installed (requirements-test.txt).
"""
from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from domains import new_domain

REPO = Path(__file__).resolve().parents[1]
KEYS_SUBSET = REPO / "test" / "rosdep_keys_subset.txt"
ALL_KEYS = REPO.parent / "shared" / "rosdep_keys.txt"  # every rosdep key of humble/jazzy/kilted, where present
PKG = "cmdr_ros"

# ROS Python packages -> their rosdep key (the key is the ROS package name, except tf2_ros: the Python module comes
# from tf2_ros_py; tf2_ros is the C++ package)
ROS_MODULES = {
    "rclpy": "rclpy",  # rclpy.lifecycle included: there is no rclpy_lifecycle key
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "visualization_msgs": "visualization_msgs",
    "std_srvs": "std_srvs",
    "lifecycle_msgs": "lifecycle_msgs",
    "tf2_ros": "tf2_ros_py",
    "message_filters": "message_filters",
    "cv_bridge": "cv_bridge",
    "sensor_msgs_py": "sensor_msgs_py",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python",
    "rosbag2_py": "rosbag2_py",
    "vision_msgs": "vision_msgs",  # ~/decision (optional in a pip-only venv: tools/build_vision_msgs.py)
}
# system Python packages rosdep installs (apt python3-*)
SYSTEM_MODULES = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "scipy": "python3-scipy",
    "sklearn": "python3-sklearn",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "psycopg2": "python3-psycopg2",
    "PIL": "python3-pil",
    "pytest": "python3-pytest",
    "colcon_core": "python3-colcon-common-extensions",
    "colcon_ros": "python3-colcon-common-extensions",
    "catkin_pkg": "python3-colcon-common-extensions",  # comes with colcon-ros
}
# from pip only (module -> the requirements*.txt line that brings it): the CUDA stack (rosdep's python3-torch is an
# old CPU-only distro build), and what has no rosdep key
PIP_MODULES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "huggingface_hub": "timm",  # a dependency of timm
    "open3d": "open3d",
    "tifffile": "tifffile",
    "rosbags": "rosbags",
    "psycopg": "psycopg",
    "pointcloud2": "pointcloud2",
    "onnx": "onnx",
    "threadpoolctl": "threadpoolctl",  # no rosdep key; Debian's python3-sklearn depends on its package
    "onnxruntime": "onnxruntime",
    "fastapi": "fastapi",  # the review station (cmdr_ros/review/)
    "starlette": "fastapi",  # FastAPI is built on it
    "uvicorn": "uvicorn",
    "argon2": "argon2-cffi",
    "selenium": "selenium",  # the review station's browser test
}
# keys that must never be a run dependency (the brief of issue "A real ROS 2 cell")
NOT_EXEC = {"rclpy_lifecycle", "python3-torch", "python3-torchvision", "rviz2"}
# keys of the GPU stack: nowhere in package.xml (pip installs the CUDA builds)
GPU_KEYS = {"python3-torch", "python3-torchvision", "python3-torchvision-pip", "python3-pytorch-pip",
            "python-pytorch-pip", "python3-timm-pip", "python3-open3d", "python3-open3d-pip", "python-open3d-pip"}
# run dependencies nothing imports, each with the file and text that uses it
RUN_NOT_IMPORTED = {
    "ros2launch": ("launch/inspection.launch.py", "ros2 launch cmdr_ros"),
    "ros2bag": ("launch/replay.launch.py", '"ros2", "bag", "play"'),
    "rosbag2_storage_mcap": ("cmdr_ros/ros/bags/record.py", 'STORAGES = ("mcap"'),
}
TEST_NOT_IMPORTED = {
    "python3-pytest-timeout": ("pytest.ini", "timeout ="),
}


# ------------------------------------------------------------------ package.xml, requirements, the import scan

def _deps(root: ET.Element, *tags: str) -> set[str]:
    return {e.text.strip() for e in root if e.tag in tags and e.text}


@pytest.fixture(scope="module")
def manifest() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def exec_keys(root: ET.Element) -> set[str]:
    return _deps(root, "exec_depend", "depend", "run_depend")


def all_keys(root: ET.Element) -> set[str]:
    return {e.text.strip() for e in root if e.tag.endswith("depend") and e.text}


def known_keys() -> dict[str, str]:
    lines = [ln for ln in KEYS_SUBSET.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {ln.split()[0]: ln for ln in lines}


def requirements(*names: str) -> set[str]:
    """Normalised distribution names of requirements files (PEP 503: lower case, runs of -_. as '-')."""
    out = set()
    for name in names:
        for line in (REPO / name).read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
            if m:
                out.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return out


IMPORT_CALLS = ("import_module", "__import__", "importorskip")


def _is_import_call(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr in IMPORT_CALLS) or \
        (isinstance(func, ast.Name) and func.id in IMPORT_CALLS)


def scan_imports(files: list[Path], root: Path = REPO) -> dict[str, set[str]]:
    """Top-level module -> the files importing it: every absolute `import` / `from ... import` anywhere in the
    tree (functions, try blocks, TYPE_CHECKING), and import_module/importorskip("literal") calls."""
    found: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(root).as_posix())
    return found


def classify(found: dict[str, set[str]], local: set[str]) -> tuple[dict, dict, dict]:
    """(rosdep key -> files, pip requirement -> files, unmapped module -> files) of third-party imports."""
    keys: dict[str, set[str]] = {}
    pip: dict[str, set[str]] = {}
    unknown: dict[str, set[str]] = {}
    for module, files in found.items():
        if module in sys.stdlib_module_names or module in local:
            continue
        if module in ROS_MODULES or module in SYSTEM_MODULES:
            keys.setdefault(ROS_MODULES.get(module) or SYSTEM_MODULES[module], set()).update(files)
        elif module in PIP_MODULES:
            pip.setdefault(PIP_MODULES[module], set()).update(files)
        else:
            unknown[module] = files
    return keys, pip, unknown


def code_files() -> list[Path]:
    return sorted((REPO / PKG).rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))


def suite_files() -> list[Path]:
    return sorted((REPO / "test").glob("*.py"))


def test_package_xml_is_an_ament_python_package_of_this_version(manifest):
    assert manifest.tag == "package" and manifest.get("format") == "3"
    assert manifest.findtext("name") == PKG
    assert manifest.findtext("export/build_type") == "ament_python"
    version = re.search(r'__version__ = "([^"]+)"', (REPO / PKG / "__init__.py").read_text()).group(1)
    assert manifest.findtext("version") == version
    assert re.search(rf'version="{re.escape(version)}"', (REPO / "setup.py").read_text())


def test_package_xml_parses_with_catkin_pkg():
    """catkin_pkg is the parser rosdep and colcon-ros use."""
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg not installed (comes with colcon-ros)")
    pkg = catkin_pkg.parse_package(str(REPO / "package.xml"))
    pkg.validate()
    assert pkg.name == PKG


def test_every_dependency_is_a_rosdep_key(manifest):
    keys = known_keys()
    missing = sorted(all_keys(manifest) - set(keys))
    assert not missing, (f"package.xml names {missing}: no rosdep key in {KEYS_SUBSET.name} (`rosdep install` "
                         f"fails on an unknown key; add the line from the full list, or install it with pip)")
    unused = sorted(set(keys) - all_keys(manifest))
    assert not unused, f"{KEYS_SUBSET.name} lists keys package.xml does not name: {unused}"


def test_key_subset_lines_come_from_the_full_list():
    if not ALL_KEYS.is_file():
        pytest.skip(f"the full rosdep key list is not at {ALL_KEYS}")
    full = set(ALL_KEYS.read_text().splitlines())
    stale = [line for line in known_keys().values() if line not in full]
    assert not stale, f"lines of {KEYS_SUBSET.name} not in {ALL_KEYS}: {stale}"


def test_no_lifecycle_gpu_or_rviz_run_dependency(manifest):
    run = exec_keys(manifest)
    assert not run & NOT_EXEC, f"must not be run dependencies: {sorted(run & NOT_EXEC)}"
    gpu = all_keys(manifest) & GPU_KEYS
    assert not gpu, f"the GPU stack comes from pip (requirements.txt), never from rosdep: {sorted(gpu)}"
    # the reasons are written down where the next person adds a dependency
    text = (REPO / "package.xml").read_text()
    for word in ("torch", "rviz2", "tifffile", "rosbags", "requirements.txt"):
        assert word in text, f"package.xml's comments should say where {word} comes from"


def test_scan_sees_nested_imports_and_flags_what_is_undeclared(tmp_path):
    """The scan is the test: an import inside a function/try is found, mapped, and an unmapped one is reported."""
    (tmp_path / "m.py").write_text(
        "import os\nfrom . import sibling\n"
        "def f():\n    try:\n        import geometry_msgs.msg\n    except ImportError:\n        import psycopg2\n"
        "    from tf2_ros import Buffer\n    importlib.import_module('timm.layers')\n    import foo_bar\n")
    keys, pip, unknown = classify(scan_imports([tmp_path / "m.py"], tmp_path), set())
    assert set(keys) == {"geometry_msgs", "python3-psycopg2", "tf2_ros_py"}
    assert set(pip) == {"timm"} and set(unknown) == {"foo_bar"}
    # and on the real code: the lazily imported ones are there
    found = scan_imports(code_files())
    assert {"rclpy", "tf2_ros", "psycopg2", "psycopg", "torch", "launch_ros"} <= set(found)


def test_every_import_of_the_code_is_declared(manifest):
    keys, pip, unknown = classify(scan_imports(code_files()), {PKG})
    assert not unknown, ("modules imported by the code with no decision in test_packaging.py (a rosdep key in "
                         f"ROS_MODULES/SYSTEM_MODULES, or pip in PIP_MODULES): {unknown}")
    run = exec_keys(manifest)
    missing = {k: sorted(v) for k, v in keys.items() if k not in run}
    assert not missing, f"imported but not an exec_depend of package.xml: {missing}"
    reqs = requirements("requirements.txt")
    no_pip = {r: sorted(v) for r, v in pip.items() if r not in reqs}
    assert not no_pip, f"pip-only modules missing from requirements.txt: {no_pip}"


def test_every_run_dependency_is_used(manifest):
    keys, _, _ = classify(scan_imports(code_files()), {PKG})
    for key, (path, evidence) in RUN_NOT_IMPORTED.items():
        assert evidence in (REPO / path).read_text(), f"{key}: {path} no longer has {evidence!r}; still needed?"
    unused = sorted(exec_keys(manifest) - set(keys) - set(RUN_NOT_IMPORTED))
    assert not unused, f"exec_depends nothing imports or runs (drop them): {unused}"


def test_every_import_of_the_tests_is_declared(manifest):
    local = {p.stem for p in suite_files()} | {PKG}
    keys, pip, unknown = classify(scan_imports(suite_files()), local)
    assert not unknown, f"modules imported by the tests with no decision in test_packaging.py: {unknown}"
    declared = exec_keys(manifest) | _deps(manifest, "test_depend")
    missing = {k: sorted(v) for k, v in keys.items() if k not in declared}
    assert not missing, f"imported by the tests but neither exec_depend nor test_depend: {missing}"
    reqs = requirements("requirements.txt", "requirements-test.txt")
    no_pip = {r: sorted(v) for r, v in pip.items() if r not in reqs}
    assert not no_pip, f"pip-only modules of the tests missing from requirements*.txt: {no_pip}"
    for key, (path, evidence) in TEST_NOT_IMPORTED.items():
        assert evidence in (REPO / path).read_text(), f"{key}: {path} no longer has {evidence!r}; still needed?"
    unused = sorted(_deps(manifest, "test_depend") - set(keys) - set(TEST_NOT_IMPORTED))
    assert not unused, f"test_depends no test imports (drop them): {unused}"


def test_setup_installs_executables_where_ros2_run_looks():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg.get("develop", "script_dir") == f"$base/lib/{PKG}"
    assert cfg.get("install", "install_scripts") == f"$base/lib/{PKG}"
    assert (REPO / "resource" / PKG).is_file(), "the ament index marker resource/cmdr_ros"


# ------------------------------------------------------------------ a colcon workspace

SOURCES = ["package.xml", "setup.py", "setup.cfg", "pytest.ini", "requirements.txt", "requirements-test.txt",
           "resource", PKG, "launch", "config", "test"]


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _show(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A colcon workspace with this package built and installed (copied sources, no --symlink-install)."""
    pytest.importorskip("colcon_core", reason="colcon is not installed (requirements-test.txt: colcon-core)")
    pytest.importorskip("colcon_ros", reason="colcon-ros (the ament_python build type) is not installed")
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.is_file():
        pytest.skip(f"no colcon executable beside {sys.executable}")
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / PKG
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    (src / "models").mkdir()
    for md in (REPO / "models").glob("*.md"):
        shutil.copy2(md, src / "models" / md.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["COLCON_HOME"] = str(ws / "colcon_home")
    build = _run([colcon, "build", "--base-paths", "src"], ws, env)
    return {"ws": ws, "src": src, "install": ws / "install" / PKG, "colcon": colcon, "env": env, "build": build}


def _installed_env(workspace: dict) -> dict:
    inits = sorted(workspace["install"].glob(f"lib/python*/*-packages/{PKG}/__init__.py"))
    assert len(inits) == 1, f"the installed package: {inits}"
    env = dict(workspace["env"])
    env.update(PYTHONPATH=str(inits[0].parents[1]), AMENT_PREFIX_PATH=str(workspace["install"]),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(new_domain()),
               ROS_LOG_DIR=str(workspace["ws"] / "ros_log"), ROS_HOME=str(workspace["ws"] / "ros_home"))
    return env


def test_colcon_build_installs_the_ros_layout(workspace):
    build = workspace["build"]
    assert build.returncode == 0, _show(build)
    assert f"Finished <<< {PKG}" in build.stdout + build.stderr, _show(build)
    assert "Unknown distribution option" not in build.stdout + build.stderr, _show(build)
    inst = workspace["install"]
    for rel in [f"share/ament_index/resource_index/packages/{PKG}", f"share/{PKG}/package.xml",
                f"share/{PKG}/launch/inspection.launch.py", f"share/{PKG}/launch/replay.launch.py",
                f"share/{PKG}/config/inspection.yaml", f"share/{PKG}/config/inspection.rviz",
                f"share/{PKG}/models/README.md"]:
        assert (inst / rel).is_file(), f"not installed: {rel}"
    for exe in ("cmdr", "inspection_node"):  # where `ros2 run cmdr_ros <exe>` looks
        path = inst / "lib" / PKG / exe
        assert path.is_file() and os.access(path, os.X_OK), f"not an executable: {path}"
    assert not (inst / "lib" / PKG / PKG).exists(), "the package itself must not sit beside the executables"


def test_installed_package_is_what_runs(workspace):
    assert workspace["build"].returncode == 0, _show(workspace["build"])
    env = _installed_env(workspace)
    probe = _run([sys.executable, "-c",
                  "import importlib.metadata as md, cmdr_ros.cli.main as c, cmdr_ros.ros.node.inspection_node as n\n"
                  "print(c.__file__); print(n.__file__); print(md.distribution('cmdr-ros').locate_file(''))"],
                 workspace["ws"], env, timeout=120)
    assert probe.returncode == 0, _show(probe)
    paths = [Path(line) for line in probe.stdout.split()]
    site = Path(env["PYTHONPATH"])
    assert len(paths) == 3 and all(p.is_relative_to(site) for p in paths), \
        f"imported from outside the install ({site}): {paths}"
    assert (site / PKG / "ros" / "fastdds_large_messages.xml").is_file(), "the Fast DDS profile is not installed"
    version = _run([workspace["install"] / "lib" / PKG / "cmdr", "--version"], workspace["ws"], env, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"{PKG} 0.1.0", _show(version)


def test_installed_cmdr_help(workspace):
    assert workspace["build"].returncode == 0, _show(workspace["build"])
    p = _run([workspace["install"] / "lib" / PKG / "cmdr", "--help"], workspace["ws"], _installed_env(workspace),
             timeout=60)
    assert p.returncode == 0, _show(p)
    assert p.stdout.startswith("usage: cmdr") and "node" in p.stdout, _show(p)


def test_installed_node_exits_1_without_its_checkpoint(workspace):
    """autostart (default true) configures at once; configure fails on the missing checkpoint -> exit status 1."""
    assert workspace["build"].returncode == 0, _show(workspace["build"])
    p = _run([workspace["install"] / "lib" / PKG / "inspection_node", "--ros-args",
              "-p", "checkpoint:=/nonexistent.ckpt"], workspace["ws"], _installed_env(workspace), timeout=120)
    assert p.returncode == 1, _show(p)
    assert "checkpoint not found: /nonexistent.ckpt" in p.stderr, _show(p)
    assert "exiting with status 1" in p.stderr and "Traceback" not in p.stderr, _show(p)


def test_colcon_test_runs_the_package_tests(workspace):
    """`colcon test` finds pytest (setup.py's "test" extra) and reports through colcon test-result; the run here
    is this file's fast checks (the full suite is `make test`)."""
    assert workspace["build"].returncode == 0, _show(workspace["build"])
    ws, env = workspace["ws"], workspace["env"]
    p = _run([workspace["colcon"], "test", "--base-paths", "src", "--packages-select", PKG,
              "--return-code-on-test-failure", "--pytest-args", "test/test_packaging.py", " -k",
              "not workspace and not colcon and not installed"], ws, env)
    assert p.returncode == 0, _show(p)
    result = ET.parse(ws / "build" / PKG / "pytest.xml").getroot()
    suite = result if result.tag == "testsuite" else result.find("testsuite")
    assert int(suite.get("tests")) >= 8 and suite.get("failures") == "0" and suite.get("errors") == "0", \
        ET.tostring(suite, encoding="unicode")[:2000]
    summary = _run([workspace["colcon"], "test-result", "--test-result-base", "build"], ws, env, timeout=60)
    assert summary.returncode == 0 and "0 errors, 0 failures" in summary.stdout, _show(summary)
