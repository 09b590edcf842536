"""Run the Nightscout simulator in the foreground: ``python -m tasks.simulator --port 1337``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from tasks.simulator.generate import default_site
from tasks.simulator.server import SimulatorServer

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.simulator", description="Serve simulated Nightscout sites."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1337)
    parser.add_argument("--sites", default="a", help="comma-separated site ids (default: a)")
    parser.add_argument("--secret", default=None, help="API secret every site requires")
    parser.add_argument("--token", default=None, help="access token every site accepts")
    parser.add_argument("--days", type=int, default=400, help="days of history (default 400)")
    parser.add_argument("--no-v3", action="store_true",
                        help="answer API v3 with 404, as a server before v3 does")
    parser.add_argument(
        "--now", default=None, help="fixed 'now' as ISO 8601 with offset (default: wall clock)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C; print each site's URL first."""
    args = _parse(argv)
    ids = [s.strip() for s in args.sites.split(",") if s.strip()]
    sites = [default_site(i, api_secret=args.secret, token=args.token) for i in ids]
    now = datetime.fromisoformat(args.now) if args.now else None
    server = SimulatorServer(sites, now=now, host=args.host, port=args.port,
                             history_days=args.days, v3_enabled=not args.no_v3)
    for site in sites:
        print(
            f"site {site.site_id} ({site.timezone}, {site.device}): {server.url_for(site.site_id)}"
        )
    print(f"first site also at {server.url}; history from {server.first_day}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
