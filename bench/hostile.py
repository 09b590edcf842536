"""Peak RSS and wall time of Cascade against hostile Nightscout servers (issue 18).

    .venv/bin/python bench/hostile.py                         # this worktree's code
    .venv/bin/python bench/hostile.py --code /path/to/older/checkout --label before
    ... --cases normal,gzip-bomb --out-json bench/results/hostile-after.json

Each case makes the simulator (this worktree's, served from this process on 127.0.0.1)
misbehave one way for every request, then a fresh child process (``_hostile_child.py``)
ingests one day of entries (fetch → shape → contract → Iceberg commit) with the client of
the code at ``--code``, 2 attempts, 5 s per read and, where the code has one, a 10 s
overall deadline per request. Figures per case: the outcome, requests, work seconds (the
ingest alone, as the child timed it), wall time (process start → exit, imports included), CPU
seconds (the child's user + system, from ``wait4``)
and peak RSS (the child's ``VmHWM``: its own report, else the last sample taken while it
ran, e.g. when it died of a signal). The machine's load is recorded with the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tasks.simulator import SimulatorServer, SiteConfig, expected_records, hostile

__all__ = ["CASES", "main"]

REPO: Final = Path(__file__).resolve().parents[1]
NOW: Final = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
DAY: Final = date(2024, 4, 5)
SECRET: Final = "hostile-bench-secret"
SITE: Final = SiteConfig("h", seed=5, api_secret=SECRET)
MANY: Final = 10_000


def _victim() -> str:
    docs = expected_records(SITE, DAY, DAY + timedelta(days=1), "entries")
    return str(sorted(d["_id"] for d in docs)[len(docs) // 2])


Setup = Callable[[SimulatorServer], str]  # configures the server; says what it does


def _fault(what: str, **fault: Any) -> Setup:
    def setup(server: SimulatorServer) -> str:
        if "bomb" in fault:  # built (and cached) now, not while the child waits for it
            hostile.bomb(fault["encoding"], fault["bomb"])
        server.inject(times=MANY, path="/h/api/v1/entries", **fault)
        return what
    return setup


def _capped(server: SimulatorServer) -> str:
    server.page_cap = 50
    return "answers at most 50 documents a page (asked 5000)"


CASES: Final[dict[str, Setup]] = {
    "normal": lambda server: "a well-behaved server (the baseline)",
    "page-cap": _capped,
    "trickle": _fault("sends the answer 16 bytes every 10 ms (~70 KB: ~45 s)", trickle_s=0.01),
    "gzip-bomb": _fault("gzip bomb: 1 MiB on the wire, 1 GiB decoded", bomb=1 << 30,
                        encoding="gzip"),
    "zstd-bomb": _fault("zstd bomb: ~40 KB on the wire, 1 GiB decoded", bomb=1 << 30,
                        encoding="zstd"),
    "huge": _fault("256 MiB of documents for any count (no Content-Length)", huge=256 << 20),
    "deep": lambda server: _fault("one document nested 200,000 levels deep",
                                  mutate=hostile.deepen(_victim(), 200_000))(server),
    "bad-utf8": lambda server: _fault("one document with a byte that is not UTF-8",
                                      mutate=hostile.break_utf8(_victim()))(server),
}


def _warm(server: SimulatorServer) -> None:
    """Have the simulator generate (and cache) the day before any case is timed."""
    import hashlib

    import httpx

    start = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    httpx.get(f"{server.url_for('h')}/api/v1/entries.json",
              params={"find[date][$gte]": start, "find[date][$lt]": start + 86_400_000,
                      "count": 10_000},
              headers={"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()},
              timeout=120).raise_for_status()


def _hwm(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_case(name: str, server: SimulatorServer, code: Path) -> dict[str, Any]:
    """One case in a fresh child; its figures."""
    server.clear_faults()
    server.page_cap = None
    what = CASES[name](server)
    env = {**os.environ, "PYTHONPATH": str(code), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, str(REPO / "bench" / "_hostile_child.py"),
               "--url", server.url_for("h"), "--secret", SECRET, "--day", DAY.isoformat(),
               "--attempts", "2", "--timeout", "5", "--deadline", "10"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=code, env=env, stdout=out, stderr=err)
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _hwm(child.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - started
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
    code_ = os.waitstatus_to_exitcode(status)
    report: dict[str, Any] = json.loads(lines[-1]) if code_ == 0 and lines else {
        "outcome": f"process died ({'signal ' + str(-code_) if code_ < 0 else code_})"}
    return {"case": name, "server": what, **report, "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": max(report.get("peak_rss_mib", 0.0), round(peak, 1))}


def _markdown(rows: list[dict[str, Any]], label: str, load: str) -> str:
    head = [f"Hostile servers, {label} (load: {load})", "",
            ("| case | the server | outcome | committed / rejected | requests | work s | "
             "wall s | CPU s | peak RSS MiB |"),
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        counts = f"{r['committed']} / {r['rejected']}" if "committed" in r else "-"
        head.append(f"| {r['case']} | {r['server']} | {r['outcome']} | {counts} | "
                    f"{r.get('requests', '-')} | {r.get('seconds', '-')} | {r['wall_s']} | "
                    f"{r['cpu_s']} | "
                    f"{r['peak_rss_mib']} |")
    return "\n".join(head) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose tasks/ the child runs (default: this one)")
    parser.add_argument("--label", default="this worktree")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    load_before = os.getloadavg()
    with SimulatorServer([SITE], now=NOW, history_days=10) as server:
        _warm(server)
        rows = []
        for name in names:
            rows.append(run_case(name, server, args.code.resolve()))
            print(json.dumps(rows[-1]), flush=True)
    load = (f"{load_before[0]:.1f} → {os.getloadavg()[0]:.1f} (1-min average, "
            f"{os.cpu_count()} cores)")
    text = _markdown(rows, args.label, load)
    print(text)
    if args.out_md:
        args.out_md.write_text(text)
    if args.out_json:
        args.out_json.write_text(json.dumps({"label": args.label, "load": load,
                                             "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
