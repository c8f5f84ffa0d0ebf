"""ament_python package: `colcon build` in a ROS 2 workspace, `pip install -e .` in a plain venv."""
from glob import glob

from setuptools import find_packages, setup

package_name = "cmdr_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    # the Fast DDS profile (cmdr_ros/ros/dds_profile.py); the review station's page templates and style sheet
    package_data={"cmdr_ros.ros": ["*.xml"], "cmdr_ros.review": ["templates/*.html", "static/*.css"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", sorted(glob("launch/*.py"))),
        ("share/" + package_name + "/config", sorted(glob("config/*.yaml") + glob("config/*.rviz"))),
        ("share/" + package_name + "/models", sorted(glob("models/*.md"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="cmdr_ros maintainers",
    maintainer_email="cmdr-ros@example.com",
    description="CMDR-IAD 2D+3D unsupervised anomaly detection and its ROS 2 inspection node",
    license="Apache-2.0",
    # colcon test runs pytest when it is a "test" extra (tests_require is gone from setuptools)
    extras_require={"test": ["pytest"]},
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "cmdr = cmdr_ros.cli.main:main",
            "inspection_node = cmdr_ros.ros.node.inspection_node:main",
        ],
    },
)
