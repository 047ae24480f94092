"""`python -m devinfra up`: run Kafka and PostgreSQL for local development.

Prints `export KAFKA_BOOTSTRAP_SERVERS=...` and `export DATABASE_URL=...` on stdout (paste
them into another shell, or redirect stdout to a file and source it), then waits for Ctrl+C
or SIGTERM and stops both cleanly. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devinfra.kafka import resolve_jars
from devinfra.provider import DATABASE_ENV, KAFKA_ENV, provide_infrastructure


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before starting anything, so a signal during startup still shuts down
    # cleanly (once startup has finished) instead of orphaning a server.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with provide_infrastructure(
        args.workdir, allow_env=not args.ignore_env, allow_docker=not args.no_docker
    ) as infra:
        print(f"export {KAFKA_ENV}={shlex.quote(infra.kafka_bootstrap)}")
        print(f"export {DATABASE_ENV}={shlex.quote(infra.database_url)}")
        sys.stdout.flush()
        logging.getLogger("devinfra").info(
            "Kafka %s and PostgreSQL %s (%s) are up; Ctrl+C or SIGTERM stops them",
            infra.kafka_version, infra.postgres_version, infra.origin,
        )  # fmt: skip
        while not stop.wait(3600):
            pass
        logging.getLogger("devinfra").info("Stopping ...")
    return 0


def _acls(args: argparse.Namespace) -> int:
    from devinfra import acls

    rules = acls.default_acl_set()
    if args.script:
        print(acls.script(rules), end="")
    else:
        print("\n".join(acls.command_lines(rules)))
    return 0


def _resolve(args: argparse.Namespace) -> int:
    print(resolve_jars())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devinfra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Kafka and PostgreSQL until Ctrl+C / SIGTERM")
    up.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the local servers' data here (default: temporary, removed on exit)",
    )
    up.add_argument(
        "--ignore-env",
        action="store_true",
        help=f"start servers even if {KAFKA_ENV} / {DATABASE_ENV} are set",
    )
    up.add_argument("--no-docker", action="store_true", help="never use testcontainers")
    up.set_defaults(func=_up)
    acl_parser = sub.add_parser(
        "acls",
        help="print the Kafka ACLs a deployment needs, as kafka-acls.sh commands "
        "(topic and group names from the TOPIC_*, GROUPS_*, EXPORT_* settings)",
    )
    acl_parser.add_argument(
        "--script", action="store_true", help="as the shell script infra/kafka/acls.sh"
    )
    acl_parser.set_defaults(func=_acls)
    resolve = sub.add_parser("resolve-jars", help="fetch the Kafka jars into the cache")
    resolve.set_defaults(func=_resolve)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
