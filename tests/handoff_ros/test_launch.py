"""Launch files and parameter files, checked statically (test_launch_run.py runs them).

These checks need no ``launch``/``launch_ros`` (not on PyPI): each launch file parses; every
node it starts, itself or through the shared helpers of ``handoff_ros.launch_parts``, names a
package/executable that exists (ours: an entry point and a module with ``main``; others: an
``exec_depend`` of package.xml); every parameter it sets literally is declared by that node;
every shared launch argument it declares is one the helpers describe; every parameter file it
references exists; every parameter file parses with rcl's own C parser and sets only declared
parameters, with the declared type and values the node accepts; and ``colcon build`` installs
the executables, configs and launch files.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from handoff_ros.rosutil import param_fields  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "ros2_ws" / "src" / "handoff_ros"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
LAUNCH_PARTS = PKG / "handoff_ros" / "launch_parts.py"  # what the launch files share
PARAM_FILES = sorted((PKG / "config").glob("*.yaml"))
# node executable -> its parameter dataclass (the one source of its declarations)
PARAMS = {
    "sim_arm": "SimArmParams",
    "camera": "CameraParams",
    "teleop": "TeleopParams",
    "recorder": "RecorderParams",
    "policy": "PolicyParams",
}
NODE_ACTIONS = ("Node", "LifecycleNode")  # launch_ros actions that start a node
BUILTIN = {"use_sim_time"}  # declared by rclpy for every node


def params_class(executable: str) -> type:
    module = importlib.import_module(f"handoff_ros.{executable}")
    cls = getattr(module, PARAMS[executable])
    # the node declares exactly this dataclass's fields
    assert f"declare_params(self, {cls.__name__})" in Path(module.__file__).read_text()
    return cls


def _called(call: ast.Call) -> str:
    """The name a call calls: ``f(...)`` and ``module.f(...)`` both give ``f``."""
    return getattr(call.func, "id", "") or getattr(call.func, "attr", "")


def _dict_keys(nodes: list[ast.expr]) -> list[str]:
    """Literal keys of the dict literals among ``nodes`` (and in list literals there)."""
    keys = []
    for item in nodes:
        for d in [item, *getattr(item, "elts", [])]:
            if isinstance(d, ast.Dict):
                keys += [k.value for k in d.keys if isinstance(k, ast.Constant)]
    return keys


def parts_helpers() -> dict[str, ast.FunctionDef]:
    """The functions of ``handoff_ros.launch_parts``, by name."""
    tree = ast.parse(LAUNCH_PARTS.read_text())
    return {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}


def imported_parts(tree: ast.Module) -> set[str]:
    """The names a launch file imports from ``handoff_ros.launch_parts``."""
    return {
        alias.asname or alias.name
        for imp in ast.walk(tree)
        if isinstance(imp, ast.ImportFrom) and imp.module == "handoff_ros.launch_parts"
        for alias in imp.names
    }


def _nodes_in(
    tree: ast.AST, names: set[str], helpers: dict[str, ast.FunctionDef], seen: frozenset[str]
) -> list[dict]:
    """Node calls in ``tree``, and those of the helpers it calls (``names``), recursively."""
    out = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = _called(call)
        if name in NODE_ACTIONS:
            kw = {k.arg: k.value for k in call.keywords}
            node = {k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)}
            node["parameter_keys"] = _dict_keys([kw["parameters"]] if "parameters" in kw else [])
            out.append(node)
        elif name in names and name not in seen:
            # the helper's nodes, with the parameters this call passes it (dict literals)
            keys = _dict_keys(call.args + [k.value for k in call.keywords])
            for node in _nodes_in(helpers[name], set(helpers), helpers, seen | {name}):
                out.append({**node, "parameter_keys": node["parameter_keys"] + keys})
    return out


def launch_nodes(path: Path) -> list[dict]:
    """Every ``Node(...)``/``LifecycleNode(...)`` call, in the launch file or in the
    launch_parts helpers it calls: literal kwargs, and literal keys of parameter dicts (also
    those a helper call passes)."""
    tree = ast.parse(path.read_text())
    return _nodes_in(tree, imported_parts(tree), parts_helpers(), frozenset())


def exec_depends() -> set[str]:
    tree = ElementTree.parse(PKG / "package.xml")
    return {e.text for e in tree.getroot().iter("exec_depend")}


def test_there_are_four_launch_files_and_two_param_files():
    names = {p.name for p in LAUNCH_FILES}
    assert names == {
        "sim.launch.py",
        "teleop_record.launch.py",
        "policy.launch.py",
        "correct.launch.py",
    }
    assert {p.name for p in PARAM_FILES} >= {"sim_panda.yaml", "real_arm_template.yaml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_exist_and_set_only_declared_parameters(path):
    text = path.read_text()
    assert "def generate_launch_description" in text
    nodes = launch_nodes(path)
    assert nodes
    setup = (PKG / "setup.py").read_text()
    for node in nodes:
        exe = node["executable"]
        if node["package"] == "handoff_ros":
            assert re.search(rf'"{exe}"', setup), f"{exe} is not a console script in setup.py"
            module = importlib.import_module(f"handoff_ros.{exe}")
            assert callable(module.main)
            declared = set(param_fields(params_class(exe))) | BUILTIN
            undeclared = set(node["parameter_keys"]) - declared
            assert not undeclared, f"{path.name}: {exe} does not declare {undeclared}"
        else:
            assert node["package"] in exec_depends(), f"{node['package']} not in package.xml"
    if imported_parts(ast.parse(text)):  # its parameter file default is there
        text += LAUNCH_PARTS.read_text()
    for yaml_name in re.findall(r'"([\w.-]+\.yaml)"', text):
        assert (PKG / "config" / yaml_name).is_file(), yaml_name


def test_launch_files_start_their_nodes_through_the_shared_helpers():
    started = {p.name: {n["name"] for n in launch_nodes(p)} for p in LAUNCH_FILES}
    assert started == {
        "sim.launch.py": {"sim_arm"},
        "policy.launch.py": {"sim_arm", "policy"},
        "teleop_record.launch.py": {"sim_arm", "camera", "joy", "teleop", "recorder"},
        "correct.launch.py": {"sim_arm", "camera", "joy", "teleop", "recorder", "policy"},
    }
    # a parameter passed to a helper reaches its node's keys: the recorder's source
    (recorder,) = [n for n in launch_nodes(ROOT / "launch" / "correct.launch.py")
                   if n["name"] == "recorder"]  # fmt: skip
    assert set(recorder["parameter_keys"]) == {"store", "source"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_shared_launch_arguments_are_declared_under_their_own_name(path):
    """``DeclareLaunchArgument("x", **common("x"))``: the name a user passes is the one whose
    default and description launch_parts.common gives."""
    common = next(d for d in ast.walk(parts_helpers()["common"]) if isinstance(d, ast.Dict))
    described = {k.value for k in common.keys if isinstance(k, ast.Constant)}
    shared = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and _called(call) == "DeclareLaunchArgument":
            name = call.args[0].value
            for kw in call.keywords:
                if kw.arg is None:  # **common("name")
                    assert _called(kw.value) == "common", f"{path.name}: {name}"
                    assert kw.value.args[0].value == name, f"{path.name}: {name}"
                    assert name in described, f"{path.name}: common has no {name}"
                    shared.append(name)
    assert "params_file" in shared and "dds_profile" in shared, path.name


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_param_file_parses_with_rcl_and_sets_declared_parameters(path, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import yaml

    sections = yaml.safe_load(path.read_text())
    context = Context()
    # rcl's C parser (rcl_yaml_param_parser) reads the file here; a bad file fails init
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)])
    try:
        for key in sections:
            name = key.split("/")[-1]
            cls = params_class(name)
            fields = param_fields(cls)
            namespace = "/scene" if key.startswith("/**/") else "/"
            node = Node(name, namespace=namespace, context=context, start_parameter_services=False)
            overrides = dict(node._parameter_overrides)
            node.destroy_node()
            assert overrides, f"{path.name}: rcl found no parameters for {key}"
            values = {}
            for pname, value in overrides.items():
                assert pname in fields or pname in BUILTIN, f"{path.name}: {name}.{pname}"
                if pname in BUILTIN:
                    continue
                default_type = Parameter.Type.from_parameter_value(fields[pname][0])
                assert value.type_ == default_type, f"{path.name}: {name}.{pname} type"
                values[pname] = value.value
            defaults = {k: d for k, (d, _) in fields.items()}
            if name == "policy":
                defaults["checkpoint"] = "runs/x"  # a launch argument, not in the file
            cls(**{**defaults, **values})  # the node's own validation accepts the file
    finally:
        rclpy.shutdown(context=context)


def test_every_parameter_has_a_description():
    for exe in PARAMS:
        for name, (_, description) in param_fields(params_class(exe)).items():
            assert len(description) > 10, f"{exe}.{name}"
        assert dataclasses.is_dataclass(params_class(exe))


@pytest.mark.skipif(shutil.which("colcon", path=str(Path(sys.executable).parent)) is None,
                    reason="colcon is not installed in this environment")  # fmt: skip
def test_colcon_build_installs_executables_configs_and_launch_files(tmp_path):
    colcon = str(Path(sys.executable).parent / "colcon")
    args = [colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(PKG)]
    args += ["--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    prefix = tmp_path / "install" / "handoff_ros"
    for exe in PARAMS:
        assert (prefix / "lib" / "handoff_ros" / exe).is_file(), exe
    share = prefix / "share" / "handoff_ros"
    assert {p.name for p in (share / "launch").iterdir()} == {p.name for p in LAUNCH_FILES}
    assert {p.name for p in (share / "config").iterdir()} == {p.name for p in PARAM_FILES}
    assert (share / "package.xml").is_file()
    index = prefix / "share" / "ament_index" / "resource_index" / "packages" / "handoff_ros"
    assert index.is_file()
