"""The Docker files, checked without a Docker engine (none runs on this machine).

What is checked: every Dockerfile's base image is pinned, every path it COPYs exists in the
repository, the entrypoint exists and is executable; every compose service builds from an
existing Dockerfile and runs a node, launch file and parameter file that exist; the smoke-test
script (docker/smoke_test.sh) parses, builds every Dockerfile, and uses commands, launch
arguments and log lines that exist. What is not: that the images build or run, which needs an
engine and network access -- a user with Docker runs docker/smoke_test.sh for that.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
PKG = REPO / "ros2_ws/src/handoff_ros"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_there_is_a_ros_and_a_cuda_image():
    assert {p.name for p in DOCKERFILES} >= {"ros.Dockerfile", "cuda.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_and_copies_existing_paths(dockerfile):
    ins = _instructions(dockerfile)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        name, _, tag = image.split()[0].partition(":")
        assert tag and tag != "latest", f"{dockerfile.name}: base image {image} is not pinned"
    assert any("torch==${TORCH_VERSION}" in rest for op, rest in ins if op == "RUN")
    copies = [shlex.split(rest) for op, rest in ins if op == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    for op, rest in ins:
        if op == "ENTRYPOINT":
            target = REPO / "docker" / Path(yaml.safe_load(rest)[0]).name
            assert target.exists() and os.access(target, os.X_OK)


def _declared_nodes() -> set[str]:
    text = (PKG / "setup.py").read_text()
    return set(re.findall(r'"(\w+)"', text.split("NODES = [", 1)[1].split("]", 1)[0]))


def test_compose_services_reference_existing_things():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"camera", "teleop", "recorder", "policy"} <= set(services)
    nodes = _declared_nodes()
    launches = {p.name for p in (REPO / "launch").glob("*.launch.py")}
    configs = {p.name for p in (PKG / "config").glob("*.yaml")}
    for name, svc in services.items():
        build = svc["build"]
        assert (REPO / "docker" / build["context"] / build["dockerfile"]).resolve().exists()
        assert svc["network_mode"] == "host", f"{name}: DDS needs host networking"
        assert svc["environment"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
        cmd = svc["command"]
        assert cmd[0] == "ros2" and cmd[2] == "handoff_ros", f"{name}: {cmd}"
        if cmd[1] == "run":
            assert cmd[3] in nodes, f"{name}: node {cmd[3]} is not an executable of the package"
        else:
            assert cmd[1] == "launch" and cmd[3] in launches, f"{name}: launch {cmd[3]} missing"
        for i, arg in enumerate(cmd):
            value = cmd[i + 1] if arg in ("--params-file", "-p") else arg.partition(":=")[2]
            if arg == "--params-file" or arg.startswith("params_file:="):
                stem = Path(value).stem
                assert {f"{stem}.yaml", f"{stem}_template.yaml"} & configs, (
                    f"{name}: {value} has no template in {PKG / 'config'}"
                )
            elif cmd[1] == "launch" and ":=" in arg:
                launch_text = (REPO / "launch" / cmd[3]).read_text()
                key = arg.partition(":=")[0]
                assert re.search(rf'DeclareLaunchArgument\(\s*"{key}"', launch_text), (
                    f"{name}: launch argument {key} is not declared by {cmd[3]}"
                )
            elif arg == "-p":
                key = value.partition(":=")[0]
                node_src = (PKG / "handoff_ros" / f"{cmd[3]}.py").read_text()
                assert re.search(rf"^\s+{key}: \w+ = param\(", node_src, re.M), (
                    f"{name}: parameter {key} is not declared by node {cmd[3]}"
                )


def test_smoke_test_script_builds_every_image_and_uses_what_exists():
    script = REPO / "docker" / "smoke_test.sh"
    assert os.access(script, os.X_OK)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # bash parses it
    text = script.read_text()
    for dockerfile in DOCKERFILES:
        assert f"docker build -f docker/{dockerfile.name} -t handoff:" in text, dockerfile.name
    scripts = {e.name for e in distribution("handoff").entry_points if e.group == "console_scripts"}
    used = set(re.findall(r"handoff:\w+ (handoff-[a-z]+) ", text))  # run in an image
    assert used >= {"handoff-collect", "handoff-train"} and used <= scripts, used
    launch = re.search(r"ros2 launch handoff_ros (\S+) (.*?) *\\?\n", text)
    assert launch and (REPO / "launch" / launch.group(1)).is_file()
    launch_text = (REPO / "launch" / launch.group(1)).read_text()
    for key in re.findall(r"(\w+):=", launch.group(2)):
        assert re.search(rf'DeclareLaunchArgument\(\s*"{key}"', launch_text), key
    # the log line it waits for is the policy node's
    waited = re.search(r'grep -q "([^"]+)" /work/launch.log', text).group(1)
    node = (PKG / "handoff_ros" / "policy.py").read_text()
    assert waited in node, waited
