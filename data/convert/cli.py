"""``handoff-data convert``: the command-line face of :func:`data.convert.convert`.

    handoff-data convert --from robomimic --to handoff demo.hdf5 demo.zarr
    handoff-data convert --from handoff --to lerobot demo.zarr lerobot_demo/ --fps 20
    handoff-data convert --from rosbag2 --to handoff session.mcap/ demo.zarr \\
        --embodiment my_arm.yaml -o joint_states_topic=/arm/joint_states -o gap_s=2
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from data.errors import UserError


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    from data.convert.base import FORMATS

    names = ", ".join(FORMATS.names())
    s = subparsers.add_parser(
        "convert",
        help="convert demonstrations between handoff, lerobot, robomimic and rosbag2",
        description=f"Convert SRC in one format to DST in another. Formats: {names}.",
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
    s.add_argument("--fps", type=float, help="frame rate for LeRobot output (default: the spec's)")
    s.add_argument("--video-codec", help="LeRobot video encoder (default libx264, H.264)")
    s.add_argument("--crf", type=int, help="video quality, lower is better (default 18)")
    s.add_argument(
        "--images", choices=("video", "png"), help="LeRobot cameras: video (default) or png"
    )
    s.add_argument("--task", help="task name for episodes whose source has none")
    s.add_argument("--gap-s", type=float, help="rosbag2: a pause this long splits episodes (1 s)")
    s.add_argument("--max-age-s", type=float, help="rosbag2: older observations are gaps")
    s.add_argument("--action-offset-s", type=float, help="rosbag2: command lateness allowed")
    s.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other format option, e.g. -o joint_states_topic=/arm/joint_states",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_convert)
    return s


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
    names = ("fps", "video_codec", "crf", "images", "task", "gap_s", "max_age_s")
    for name in (*names, "action_offset_s"):
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
