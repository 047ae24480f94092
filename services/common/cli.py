"""What both services' command lines share: `--version`, results as one JSON line each on
stdout, and every error as one line on stderr with a non-zero status, never a traceback.

Status 2: a bad argument (argparse's convention); 1: the command could not be done (an
unknown id, an unreachable database); 130: interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pydantic import ValidationError

from services.common.metrics import package_version

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (not the usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def new_parser(prog: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    return parser


class CommandError(Exception):
    """The command cannot be done as asked (an unknown id, say): its message is the one
    line the operator sees."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def print_result(value: Any) -> None:
    """One result: one JSON line on stdout."""
    print(json.dumps(value, ensure_ascii=False, default=str), flush=True)


def _describe(error: BaseException) -> str:
    """A failure's kind, never its message: a driver's message may quote a row's values."""
    name = type(error).__name__
    module = type(error).__module__
    if isinstance(error, ValidationError):  # settings: which ones, never their values
        fields = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False)
        )
        return f"invalid settings ({error.title}): {fields}"
    if module.startswith(("asyncpg", "sqlalchemy")):
        return f"the database refused or failed: {name}"
    if module.startswith("aiokafka"):
        return f"the broker refused or failed: {name}"
    if isinstance(error, OSError):
        return f"cannot reach the database or broker, or read a file: {name}"
    return f"unexpected {name}"


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run `command`, turning every failure into one line on stderr and a status."""
    try:
        return command()
    except CommandError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        log.debug("command failed", exc_info=error)
        print(
            f"{prog}: error: {_describe(error)} (LOG_LEVEL=DEBUG logs where)",
            file=sys.stderr,
        )
        return EXIT_FAILED
