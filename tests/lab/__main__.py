"""Command line of the lab: ``python -m tests.lab up|down|status|reset|demo [--dir DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.ceph_lab import CephLab, LabError
from tests.lab.wait import WaitTimeoutError


def format_status(status: dict[str, Any]) -> str:
    """Give a human-readable rendering of :meth:`CephLab.status`."""
    lines = [
        f"lab {status['root']} (port base {status['port_base']}, phase {status['phase']}): "
        + ("HEALTHY" if status["healthy"] else "NOT HEALTHY"),
    ]
    for name, site in status["sites"].items():
        lines.append(f"{name}: mon {site['mon_host']} fsid {site['fsid'] or '-'}")
        daemons = []
        for dname, proc in site["processes"].items():
            daemons.append(
                f"{dname} pid {proc['pid']} {proc['rss_mib']:.0f} MiB" if proc else f"{dname} DOWN"
            )
        lines.append("  processes: " + ", ".join(daemons))
        if "error" in site:
            lines.append(f"  error: {site['error']}")
        if "health" in site:
            muted = f" (muted: {', '.join(site['muted'])})" if site.get("muted") else ""
            checks = f" checks: {', '.join(site['health_checks'])}" if site["health_checks"] else ""
            lines.append(f"  health: {site['health']}{muted}{checks}; IO ready: {site['io_ready']}")
        if "mirror_mode" in site:
            peers = ", ".join(f"{p['site_name']} ({p['direction']})" for p in site["peers"])
            lines.append(
                f"  pool mirror mode: {site['mirror_mode']}, site name {site['site_name']}, "
                f"peers: {peers or 'none'}"
            )
        if "daemon_health" in site:
            lines.append(
                f"  mirroring health {site['mirror_health']}: daemon {site['daemon_health']}, "
                f"images {site['image_health']} {site['images'] or ''}".rstrip()
            )
    lines.append(f"RSS of all lab daemons: {status['rss_mib_total']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run a lab command; give the exit status (1 with a one-line reason on failure)."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "reset", "demo"])
    parser.add_argument(
        "--dir", type=Path, help="lab directory (default .lab or $PVE_MIRROR_LAB_DIR)"
    )
    parser.add_argument("--port-base", type=int, help="port base (default 20000)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--keep", action="store_true", help="demo: leave the lab up")
    args = parser.parse_args(argv)

    lab = CephLab(args.dir, args.port_base)
    try:
        if args.command == "demo":
            from tests.lab.demo import run_demo

            return run_demo(lab, keep=args.keep)
        if args.command == "status":
            status = lab.status()
            print(json.dumps(status, indent=2) if args.json else format_status(status))
            return 0 if status["healthy"] else 3
        start = time.monotonic()
        if args.command == "up":
            text = lab.up()
        elif args.command == "down":
            text = lab.down()
        else:
            text = lab.reset()
        print(text)
        if args.command != "down":
            print(f"({args.command} took {time.monotonic() - start:.1f} s)")
        return 0
    except (LabError, WaitTimeoutError) as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
