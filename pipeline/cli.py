"""The one CLI: ``python -m pipeline {prepare-data,run} ...``. The last printed line of each
command is its output directory."""

from __future__ import annotations

import argparse
import sys

from components.data.errors import DataError
from pipeline import data_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.add_prepare_args(sub.add_parser("prepare-data", help="build the long-tailed TFRecord splits"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare-data":
            out = data_cli.run_prepare(args)
        else:  # pragma: no cover - argparse rejects unknown commands
            raise AssertionError(args.command)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
