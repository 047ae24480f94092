"""Which `services/` code a run measures, frozen for the whole run.

Others edit the working tree while a run goes on, so the run first copies `services/`
(by default the working tree's, or a git revision's with `--services-from REV`, or
another checkout's with `--services-from DIR`) to `.run/bench/src-*/` and re-executes
itself with that copy first on the import path (`PYTHONSAFEPATH=1`, so the current
directory does not shadow it). The service processes and the export backfill inherit the
environment and import the same copy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SOURCE_ENV = "BENCH_SOURCE"
REPO = Path(__file__).resolve().parents[1]


def _digest(root: Path) -> str:
    """A short hash of every file under root/services (names and bytes)."""
    sha = hashlib.sha256()
    for path in sorted((root / "services").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            sha.update(str(path.relative_to(root)).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def _ignore(_directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]


def prepare(spec: str | None, workdir: Path) -> tuple[Path, str]:
    """The directory to import `services` from, and a description of it."""
    if spec is not None and Path(spec).is_dir():
        root = Path(spec).resolve()
        if not (root / "services").is_dir():
            raise SystemExit(f"--services-from {spec}: no services/ directory there")
        return root, f"directory {root} (tree {_digest(root)})"
    staging = workdir / "src-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if spec is None:
        shutil.copytree(REPO / "services", staging / "services", ignore=_ignore)
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "services"],
            cwd=REPO, capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        head = _rev_parse("HEAD")
        what = f"working tree at {head[:10]}" + (
            f" + {len(changed.splitlines())} uncommitted files" if changed else ""
        )
    else:
        commit = _rev_parse(spec)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "services"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(staging, filter="data")
        what = f"git {spec} = {commit[:10]}"
    digest = _digest(staging)
    target = workdir / f"src-{digest}"
    if target.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(target)
    return target, f"{what} (tree {digest})"


def _rev_parse(spec: str) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", f"{spec}^{{commit}}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"--services-from {spec}: not a directory nor a git revision")
    return result.stdout.strip()


def reexec_with(root: Path, description: str, argv: list[str], *, module: str = "bench") -> None:
    """Run `python -m <module> argv` again with `root`'s services first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONSAFEPATH"] = "1"
    env[SOURCE_ENV] = description
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def check_imported(root_hint: str) -> str:
    """Where `services` was imported from in this process (for the machine facts)."""
    import services

    location = str(Path(next(iter(services.__path__))).resolve().parent)
    return f"{root_hint}; imported from {location}"


def add_services_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--services-from",
        metavar="REV|DIR",
        help="measure services/ of a git revision or of another checkout "
        "(default: the working tree, copied at start)",
    )


def frozen(spec: str | None, workdir: Path, argv: list[str], *, module: str) -> str:
    """Re-executes `python -m <module> argv` with a frozen copy of the services (does not
    return), unless this process is that re-execution: then where `services` came from."""
    description = os.environ.get(SOURCE_ENV)
    if description is None:
        root, description = prepare(spec, workdir)
        reexec_with(root, description, argv, module=module)
    return check_imported(description)
