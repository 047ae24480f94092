"""`python -m bench [--quick | --full] [--only PHASES] [--loads N,N] [--profile]
[--services-from REV|DIR]`.

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

# The phases `--only` may pick, in the order a run goes through them.
PHASES = ("limits", "groups", "scaling", "versus", "export")


def parse_loads(text: str) -> tuple[int, ...]:
    """`--loads 20,200`: starts/s above 0, ascending (the saturation rule skips the loads
    after the first one a service cannot keep up with)."""
    try:
        loads = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers") from None
    if not loads or loads[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one load, each above 0")
    return loads


def parse_phases(text: str) -> tuple[str, ...]:
    """`--only versus[,export]`: those phases, in the run's own order."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    if not wanted or wanted - set(PHASES):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(PHASES)}")
    return tuple(phase for phase in PHASES if phase in wanted)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 3 minutes (the default)")
    mode.add_argument("--full", action="store_true", help="the full sizes, 10-15 minutes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run the groups service once more under py-spy, with its SQL counted",
    )
    source.add_services_from(parser)
    parser.add_argument(
        "--only",
        dest="phases",
        type=parse_phases,
        default=PHASES,
        metavar="PHASES",
        help=f"run only these phases, comma-separated ({', '.join(PHASES)}); "
        "e.g. --only versus for the comparison with the plain FastStream service",
    )
    parser.add_argument(
        "--loads",
        type=parse_loads,
        metavar="N,N",
        help="the latency phases' loads in starts/s (default 20,200,500,1000)",
    )
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
