"""`python -m bench [--quick | --full] [--profile] [--services-from REV|DIR]`.

Starts its own Apache Kafka broker and embedded PostgreSQL (temporary directories),
measures the limits and the services in the same run, prints the machine facts and one
table, writes `.run/bench/results.json`, and stops everything it started. The services'
code is frozen for the run (see `bench.source`); nothing here imports it before that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import source


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about a minute (the default)")
    mode.add_argument("--full", action="store_true", help="the full sizes, 10-15 minutes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run the groups service once more under py-spy, with its SQL counted",
    )
    source.add_services_from(parser)
    parser.add_argument("--out", type=Path, default=Path(".run/bench/results.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse(arguments)
    imported = source.frozen(
        args.services_from, args.out.resolve().parent, arguments, module="bench"
    )
    from bench import runner

    return runner.main(args, imported)


if __name__ == "__main__":
    sys.exit(main())
