"""The `bild` console script: one module per subcommand, each adding its own parser."""

from __future__ import annotations

import argparse
import sys

from .calibrate import calibrate_command_parser
from .env import env_command_parser
from .eval.cli import align_parser, sweep_parser
from .fetch import fetch_command_parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser("bild", description="Big Little Decoder for HuggingFace transformers.")
    subparsers = parser.add_subparsers(dest="command")
    align_parser(subparsers)
    calibrate_command_parser(subparsers)
    env_command_parser(subparsers)
    fetch_command_parser(subparsers)
    sweep_parser(subparsers)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
