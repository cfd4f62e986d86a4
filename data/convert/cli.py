"""``handoff-data convert``: the command-line face of :func:`data.convert.convert`.

    handoff-data convert --from robomimic --to handoff demo.hdf5 demo.zarr
    handoff-data convert --from handoff --to lerobot demo.zarr lerobot_demo/ --fps 20
    handoff-data convert --from rosbag2 --to handoff session.mcap/ demo.zarr \\
        --embodiment my_arm.yaml -o joint_states_topic=/arm/joint_states -o gap_s=2

Every option a format declares (data/convert/base.py ``Option``) is a flag here,
``--name-with-dashes``, built from the declarations; ``-o KEY=VALUE`` sets any option too.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from data.errors import UserError

# the command's own arguments: a format option may not take one of these names
OWN = {"from_format", "to_format", "src", "dst", "force", "embodiment", "option", "quiet", "func"}
METAVARS = {str: "TEXT", int: "INT", float: "NUMBER"}


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    from data.convert.base import load_formats

    formats = load_formats()
    names = ", ".join(formats.names())
    s = subparsers.add_parser(
        "convert",
        help="convert demonstrations between handoff, lerobot, robomimic and rosbag2",
        description=f"Convert SRC in one format to DST in another. Formats: {names}.",
        epilog=format_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--from", dest="from_format", required=True, metavar="FORMAT", help=names)
    s.add_argument("--to", dest="to_format", required=True, metavar="FORMAT", help=names)
    s.add_argument("src", help="input store, file or directory")
    s.add_argument(
        "dst", help="output path (refused if it exists, unless --force; never inside SRC)"
    )
    s.add_argument(
        "--force", action="store_true", help="replace DST once the new output is complete"
    )
    s.add_argument(
        "--embodiment", help="spec name or YAML path (needed for rosbag2; overrides the source's)"
    )
    s.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any format option, e.g. -o joint_states_topic=/arm/joint_states",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    group = s.add_argument_group("format options (see the table below)")
    for name, declared in option_flags().items():
        first = declared[0][2]
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=first.type,
            choices=first.choices,
            metavar=None if first.choices else METAVARS[first.type],
            help=_flag_help(declared),
        )
    s.set_defaults(func=run_convert)
    return s


def option_flags() -> dict[str, list[tuple[str, str, Any]]]:
    """{option name: [(format, "read" | "write", Option), ...]} over every registered format.

    One name is one flag, so formats that declare the same name must agree on its type and
    choices (TypeError otherwise, as for a name the command itself uses).
    """
    from data.convert.base import load_formats

    formats = load_formats()
    flags: dict[str, list[tuple[str, str, Any]]] = {}
    for fmt in formats:
        f = formats.get(fmt)
        for side, options in (("read", f.read_options), ("write", f.write_options)):
            for o in options:
                if o.name in OWN:
                    raise TypeError(f"format {fmt!r}: option {o.name!r} is a convert argument")
                have = flags.setdefault(o.name, [])
                if have and (have[0][2].type, have[0][2].choices) != (o.type, o.choices):
                    raise TypeError(
                        f"option {o.name!r}: {fmt} declares it unlike {have[0][0]} "
                        "(one flag needs one type and one set of choices)"
                    )
                have.append((fmt, side, o))
    return flags


def _flag_help(declared: list[tuple[str, str, Any]]) -> str:
    """``lerobot write: video quality, lower is better (default 18)``; a text several formats
    or sides share once, e.g. ``handoff read, rosbag2 read/write: ...``."""
    parts: dict[str, dict[str, list[str]]] = {}
    for fmt, side, o in declared:
        default = "" if o.default in (None, "") else f" (default {o.default})"
        parts.setdefault(f"{o.help}{default}", {}).setdefault(fmt, []).append(side)
    text = "; ".join(
        ", ".join(f"{fmt} {'/'.join(sides)}" for fmt, sides in where.items()) + f": {h}"
        for h, where in parts.items()
    )
    return text.replace("%", "%%")  # argparse formats help with %


def format_table() -> str:
    """Each format's options, read and write side, for the command's --help."""
    from data.convert.base import load_formats

    formats = load_formats()
    lines = ["options of each format (--flag or -o name=VALUE):"]
    for name in formats:
        f = formats.get(name)
        for side, options in (("read", f.read_options), ("write", f.write_options)):
            can = f.open_reader if side == "read" else f.open_writer
            if can is not None:
                listed = ", ".join(o.name for o in options) or "none"
                first = f"  {name:<10} {side:<5}  "
                lines += textwrap.wrap(listed, 92, initial_indent=first, subsequent_indent=" " * 20)
    return "\n".join(lines)


def parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: write it as KEY=VALUE")
        try:
            out[key] = json.loads(value)  # numbers and booleans; anything else stays text
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_convert(args: argparse.Namespace) -> int:
    from data.convert import convert

    options = parse_options(args.option)
    for name in option_flags():  # a flag given wins over -o
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    report = convert(
        args.src,
        args.dst,
        args.from_format,
        args.to_format,
        force=args.force,
        embodiment=args.embodiment,
        progress=not args.quiet,
        **options,
    )
    print(json.dumps(report, indent=2))
    return 0
