"""``python -m data.convert --from F --to F SRC DST``: the same as ``handoff-data convert``."""

from __future__ import annotations

import argparse
import sys

from data.convert.cli import add_convert_parser
from data.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.convert")
    sub = parser.add_subparsers(dest="command")
    add_convert_parser(sub)
    args = parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
