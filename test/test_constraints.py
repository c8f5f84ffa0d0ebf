"""The apt-install recipe per distribution: requirements.txt under constraints/<distro>.txt resolves, for that
distribution's Python and glibc, to numpy 1.x (what its ROS packages are built against), with no ROS wheel shadowing
the distribution's own rclpy and messages; docs/install.md names exactly these constraints files.

Resolving asks the package registry (``pip install --dry-run --report``, wheels only, for the target Python and
platform); it skips only when the registry cannot be reached."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = ("Failed to establish a new connection", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Could not fetch URL")


@dataclass(frozen=True)
class Distribution:
    ubuntu: str
    python: str  # the apt python3
    glibc: int  # 2.<glibc>: the newest manylinux tag its wheels may carry
    numpy_built: str  # python3-numpy the distribution's Python extensions are compiled against


DISTRIBUTIONS = {
    "humble": Distribution("22.04", "3.10", 35, "1.21.5"),
    "jazzy": Distribution("24.04", "3.12", 39, "1.26.4"),
    "kilted": Distribution("24.04", "3.12", 39, "1.26.4"),
}


def version(text: str) -> tuple[int, ...]:
    """A release number as a tuple ("1.26.4" -> (1, 26, 4); a local label like "+cpu" is left out)."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", text).group(0).split("."))


def platforms(glibc: int) -> list[str]:
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 16, -1)] + ["manylinux2014_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def resolve(requirements: list[str], python: str, glibc: int, workdir: Path) -> dict[str, tuple[int, ...]]:
    """What pip would install for ``requirements`` (pip arguments) on that Python/glibc: {name: version}."""
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--target", str(workdir / "target"), "--python-version", python, *platforms(glibc),
           "--only-binary=:all:", "--report", str(report), *requirements]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    if run.returncode != 0:
        if any(text in run.stdout + run.stderr for text in UNREACHABLE):
            pytest.skip(f"the package registry cannot be reached: {(run.stderr or run.stdout)[-300:]}")
        pytest.fail(f"{' '.join(cmd)}\nexit {run.returncode}\n{run.stderr[-3000:]}")
    return {re.sub(r"[-_.]+", "-", item["metadata"]["name"].lower()): version(item["metadata"]["version"])
            for item in json.loads(report.read_text())["install"]}


def pinned(name: str) -> tuple[int, ...]:
    found = re.search(rf"^{name}==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert found, f"{name} is not pinned in requirements.txt"
    return version(found.group(1))


GPU_STACK = ("torch", "torchvision")  # resolved by their index listing (below): their wheels are ~0.5-1 GB to fetch


def without_gpu_stack(workdir: Path) -> Path:
    """requirements.txt without the torch/torchvision pins: pip would download each wheel whole to read its metadata
    (several GB for three distributions); ``test_the_pinned_torch_exists_for_that_python`` checks those pins."""
    out = workdir / "requirements.txt"
    out.write_text("".join(line for line in (REPO / "requirements.txt").read_text().splitlines(keepends=True)
                           if re.split(r"[=<>~! ]", line.strip(), maxsplit=1)[0].lower() not in GPU_STACK))
    return out


def listed_versions(name: str, python: str, glibc: int) -> set[tuple[int, ...]]:
    """The versions of ``name`` the registry offers as wheels for that Python/glibc (``pip index versions``)."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", name, "--python-version", python, *platforms(glibc),
           "--only-binary=:all:"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    if run.returncode != 0 and any(text in run.stdout + run.stderr for text in UNREACHABLE):
        pytest.skip(f"the package registry cannot be reached: {(run.stderr or run.stdout)[-300:]}")
    found = re.search(r"Available versions: (.*)", run.stdout)
    assert found, f"{' '.join(cmd)}\nexit {run.returncode}\n{run.stdout[-1000:]}{run.stderr[-2000:]}"
    return {version(v) for v in found.group(1).split(", ")}


@pytest.fixture(scope="module", params=sorted(DISTRIBUTIONS))
def resolved(request, tmp_path_factory) -> tuple[str, dict[str, tuple[int, ...]]]:
    distro = DISTRIBUTIONS[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    found = resolve(["-r", str(without_gpu_stack(workdir)), "-c", f"constraints/{request.param}.txt"], distro.python,
                    distro.glibc, workdir)
    return request.param, found


def test_every_constraints_file_is_a_tested_distribution():
    assert sorted(p.stem for p in (REPO / "constraints").glob("*.txt")) == sorted(DISTRIBUTIONS)


def test_numpy_stays_on_the_abi_the_ros_packages_are_built_for(resolved):
    name, found = resolved
    assert version(DISTRIBUTIONS[name].numpy_built) <= found["numpy"] < (2,), found["numpy"]
    assert found["opencv-python-headless"] >= (4, 9)  # requirements.txt's floor, on numpy 1.x


def test_no_ros_wheel_shadows_the_distributions_own(resolved):
    _, found = resolved
    assert [n for n in found if n.startswith("ros-") or n in ("rclpy", "rosidl-runtime-py")] == []


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_the_pinned_torch_exists_for_that_python(name):
    distro = DISTRIBUTIONS[name]
    for package in GPU_STACK:
        assert pinned(package) in listed_versions(package, distro.python, distro.glibc), (package, name)


def test_without_constraints_opencv_pulls_numpy_2(tmp_path):
    """Why the constraints exist: requirements.txt's opencv alone resolves to numpy 2 on Jazzy's Python."""
    found = resolve(["opencv-python-headless>=4.9"], "3.12", 39, tmp_path)
    assert found["numpy"] >= (2,)


def test_install_doc_names_the_tested_constraints():
    text = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
    named = re.findall(r"pip install [^\n]*-c \S*?constraints/(\w+)\.txt", text)
    assert sorted(set(named)) == sorted(DISTRIBUTIONS)
    for distro, facts in DISTRIBUTIONS.items():  # each section says the Python and numpy the test resolves for
        section = re.search(rf"^## .*{distro.capitalize()}.*?(?=^## |\Z)", text, re.S | re.M | re.I)
        assert section, f"docs/install.md: no section for {distro}"
        assert f"Python {facts.python}" in section.group(0) and f"numpy {facts.numpy_built}" in section.group(0), \
            distro
