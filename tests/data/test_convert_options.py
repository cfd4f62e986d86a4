"""Format options are declared once on the format: they become convert flags, are checked by
name, take their declared default, and formats are found without a hand-written list."""

from __future__ import annotations

import argparse
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import data.convert
from data.convert import FORMATS, Format, Option, convert
from data.convert.base import PLUMBING
from data.convert.cli import add_convert_parser
from data.errors import UserError
from tests.data.test_convert_common import make_store


class ProbeWriter:
    """A writer that keeps the options it was opened with (and writes nothing)."""

    seen: list[dict] = []

    def __init__(self, path, report, reader, embodiment, *, force=False, **options) -> None:
        ProbeWriter.seen.append(options)

    def write(self, episode) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self, keep_done: bool) -> None:
        pass


@pytest.fixture
def probe(monkeypatch):
    """A format ``probe`` registered for one test, declaring two write options."""
    fmt = Format(
        name="probe",
        description="test format",
        open_writer=ProbeWriter,
        write_options=(
            Option("level_hz", "a number with a default", float, 2.5),
            Option("mode", "a choice", str, "a", ("a", "b")),
        ),
    )
    monkeypatch.setitem(FORMATS._items, "probe", fmt)
    ProbeWriter.seen = []
    return ProbeWriter.seen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="handoff-data")
    add_convert_parser(p.add_subparsers(dest="command"))
    return p


def test_declared_option_is_a_flag_that_reaches_the_converter(tmp_path, probe, capsys):
    from data.cli import main

    make_store(tmp_path / "a.zarr", lengths=(3,))
    a = str(tmp_path / "a.zarr")
    args = ["convert", "--from", "handoff", "--to", "probe", a, str(tmp_path / "p"), "--quiet"]
    assert main([*args, "--level-hz", "7.5", "--mode", "b"]) == 0
    assert probe[-1] == {"level_hz": 7.5, "mode": "b"}  # typed by the declaration
    assert json.loads(capsys.readouterr().out)["episodes"] == 1
    assert main(args) == 0  # not given: the declared defaults
    assert probe[-1] == {"level_hz": 2.5, "mode": "a"}
    assert main([*args, "-o", "level_hz=4"]) == 0  # -o sets a declared option too
    assert probe[-1]["level_hz"] == 4
    with pytest.raises(SystemExit):  # the declared choices hold on the command line
        main([*args, "--mode", "c"])
    out = _help()
    flat = " ".join(out.split())  # argparse wraps help to the terminal width
    assert "--level-hz NUMBER probe write: a number with a default (default 2.5)" in flat
    assert "probe      write  level_hz, mode" in out  # the per-format table


def _help() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        parser().parse_args(["convert", "--help"])
    return buf.getvalue()


def test_flags_of_today_keep_their_names_and_types():
    args = parser().parse_args(
        [
            "convert",
            "--from",
            "handoff",
            "--to",
            "lerobot",
            "a",
            "b",
            "--fps",
            "20",
            "--video-codec",
            "libx264",
            "--crf",
            "23",
            "--images",
            "png",
            "--task",
            "lift",
            "--gap-s",
            "2",
            "--max-age-s",
            "0.15",
            "--action-offset-s",
            "0.025",
        ]
    )
    assert (args.fps, args.crf, args.gap_s, args.max_age_s) == (20.0, 23, 2.0, 0.15)
    assert isinstance(args.crf, int) and isinstance(args.fps, float)
    assert (args.video_codec, args.images, args.task, args.action_offset_s) == (
        "libx264",
        "png",
        "lift",
        0.025,
    )
    with pytest.raises(SystemExit):
        parser().parse_args(["convert", "--from", "a", "--to", "b", "s", "d", "--images", "gif"])


def test_help_lists_every_format_and_its_options():
    out = _help()
    for name in FORMATS:
        assert f"  {name} " in out
    assert "lerobot    write  fps, video_codec, crf, images, task" in out
    flat = " ".join(out.split())  # argparse wraps help to the terminal width
    assert "--crf INT lerobot write: video quality, lower is better (default 18)" in flat


def test_unknown_option_names_it_and_the_valid_ones(tmp_path, capsys):
    from data.cli import main

    make_store(tmp_path / "a.zarr", lengths=(3,))
    with pytest.raises(UserError) as e:
        convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", gop=2)
    msg = str(e.value)
    assert "\n" not in msg and "'gop'" in msg
    assert "'crf'" in msg and "'drop_keys'" in msg and "'gap_s'" not in msg
    assert not (tmp_path / "lr").exists()
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "lr2")
    with pytest.raises(SystemExit) as e:
        main(["convert", "--from", "handoff", "--to", "lerobot", a, b, "-o", "gop=2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'gop'" in err[0] and "'video_codec'" in err[0]


def test_declared_defaults_are_the_converters_own():
    """The declaration is the one default: every reader/writer keyword agrees with it."""
    from data.convert.lerobot_write import LeRobotWriter
    from data.convert.rosbag_msgs import BagTopics
    from data.convert.rosbag_write import RosbagWriter

    lazy = {"lerobot": LeRobotWriter, "rosbag2": RosbagWriter}  # imported on first use
    checked = 0
    for name in FORMATS:
        f = FORMATS.get(name)
        sides = ((f.open_reader, f.read_options), (lazy.get(name, f.open_writer), f.write_options))
        for target, options in sides:
            params = inspect.signature(target).parameters
            for o in options:
                if o.name in params:
                    assert params[o.name].default == o.default, (name, o.name)
                else:  # topic options go through **topics into BagTopics
                    assert BagTopics.__dataclass_fields__[o.name].default == o.default
                checked += 1
    assert checked >= 30


def test_every_converter_module_is_found_and_registers_a_format():
    package = Path(data.convert.__file__).parent
    modules = {
        f"data.convert.{m.name}"
        for m in pkgutil.iter_modules([str(package)])
        if "_" not in m.name and m.name not in PLUMBING
    }
    registered = {
        (FORMATS.get(n).open_reader or FORMATS.get(n).open_writer).__module__ for n in FORMATS
    }
    assert (
        registered
        == modules
        == {
            "data.convert.handoff",
            "data.convert.lerobot",
            "data.convert.robomimic",
            "data.convert.rosbag",
        }
    )


def test_a_format_declaring_an_option_twice_is_refused():
    with pytest.raises(TypeError, match="twice"):
        Format("x", "x", read_options=(Option("a", "one"), Option("a", "two")))
    with pytest.raises(TypeError, match="str/int/float"):
        Option("a", "a list", list)


def test_a_real_flag_reaches_the_lerobot_writer(tmp_path, capsys):
    from data.cli import main

    make_store(tmp_path / "a.zarr", lengths=(3,))
    a, b = str(tmp_path / "a.zarr"), tmp_path / "lr"
    args = ["convert", "--from", "handoff", "--to", "lerobot", a, str(b), "--quiet"]
    assert main([*args, "--images", "png"]) == 0
    info = json.loads((b / "meta/info.json").read_text())
    assert info["features"]["observation.images.agentview"]["dtype"] == "image"
    assert not (b / "videos").exists()
