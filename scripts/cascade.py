#!/usr/bin/env python3
"""Set up and run Cascade on a fresh machine that has only Python 3.11+ and git.

    python3 scripts/cascade.py demo [args]   # the pipeline on the embedded profile
    python3 scripts/cascade.py test [args]   # the test suite (pytest)
    python3 scripts/cascade.py stack up|down|status   # the real services (scripts/stack.py)
    python3 scripts/cascade.py <anything>    # python -m flows <anything>

It installs uv (pinned) into ./.cascade-tools when uv is not already on PATH, creates the
project environment from uv.lock (``uv sync --frozen``), then runs the command in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".cascade-tools"


def _uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    uv = TOOLS / ("Scripts" if os.name == "nt" else "bin") / "uv"
    if not uv.exists():
        print(f"cascade: installing uv {UV_VERSION} into {TOOLS}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS)
        pip = TOOLS / ("Scripts" if os.name == "nt" else "bin") / "pip"
        subprocess.run([str(pip), "install", "--quiet", f"uv=={UV_VERSION}"], check=True)
    return str(uv)


def _sync(uv: str) -> None:
    """``uv sync --frozen``, compiling the environment to bytecode when it was last compiled
    before ``uv.lock`` changed: every later process then imports from ``.pyc`` files, even
    where ``PYTHONDONTWRITEBYTECODE`` is set (dbt, Prefect and PyIceberg take seconds longer
    to import from source). A stamp file keeps later commands to a plain sync."""
    stamp = ROOT / ".venv" / ".cascade-bytecode"
    fresh = stamp.exists() and stamp.stat().st_mtime >= (ROOT / "uv.lock").stat().st_mtime
    compile_ = [] if fresh else ["--compile-bytecode"]
    subprocess.run([uv, "sync", "--frozen", "--quiet", *compile_], cwd=ROOT, check=True)
    if not fresh:
        stamp.touch()


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - say so clearly on an older Python
        print("cascade needs Python 3.11 or newer", file=sys.stderr)
        return 2
    command, *rest = argv or ["demo"]
    uv = _uv()
    _sync(uv)
    run = [uv, "run", "--frozen", "--no-sync"]
    if command == "test":
        args = [*run, "pytest", *rest]
    elif command == "stack":
        args = [*run, "python", str(ROOT / "scripts" / "stack.py"), *rest]
    else:
        args = [*run, "python", "-m", "flows", command, *rest]
    # Prefect's temporary API server migrates a fresh database on its first start, which
    # takes longer than its default 20 s wait on a 2-core machine: give it 3 minutes.
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **os.environ}
    return subprocess.run(args, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
