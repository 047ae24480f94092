"""`python -m bench.scaleout [--records N] [--relay-rows N] [--services-from REV|DIR]`.

The measurements for the scale-out model (see `bench.scaleout`): starts its own Apache
Kafka broker and embedded PostgreSQL, prints a table, writes `.run/bench/scaleout.json`
and stops everything it started. The services' code is frozen for the run, as for
`python -m bench` (see `bench.source`); nothing here imports it before that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import source


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument(
        "--records", type=int, default=20_000, help="inbound records of the mix (part 1)"
    )
    parser.add_argument(
        "--relay-rows", type=int, default=100_000, help="outbox rows the relay drains (part 2)"
    )
    parser.add_argument(
        "--batch-sizes",
        default="wired,2000",
        help="relay round sizes to try, comma-separated; 'wired' = as the service wires it",
    )
    source.add_services_from(parser)
    parser.add_argument("--out", type=Path, default=Path(".run/bench/scaleout.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse(arguments)
    imported = source.frozen(
        args.services_from, args.out.resolve().parent, arguments, module="bench.scaleout"
    )
    from bench.scaleout import run

    return run.main(args, imported)


if __name__ == "__main__":
    sys.exit(main())
