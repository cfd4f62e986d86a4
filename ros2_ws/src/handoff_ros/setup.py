"""ament_python package of the handoff ROS 2 nodes (colcon build, or pip install -e)."""

import os
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "handoff_ros"
HERE = Path(__file__).resolve().parent
# Launch files live in the repository's top-level launch/ folder; colcon builds from this
# folder, so they are found relative to it and installed into share/handoff_ros/launch.
LAUNCH_DIR = HERE.parents[2] / "launch"
NODES = ["sim_arm", "camera", "teleop", "recorder", "policy"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    # the Fast DDS transport profiles the nodes load (host, lan, udp: rosutil.dds_profile)
    package_data={PACKAGE: ["fastdds.xml", "fastdds_lan.xml", "fastdds_udp.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        # relative to this folder: colcon refuses absolute data_files paths
        (
            f"share/{PACKAGE}/launch",
            [os.path.relpath(p, HERE) for p in sorted(LAUNCH_DIR.glob("*.launch.py"))],
        ),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="handoff",
    maintainer_email="dev@handoff.local",
    description="handoff ROS 2 nodes",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{n} = {PACKAGE}.{n}:main" for n in NODES],
    },
)
