"""Entry point: serve one site's simulated PVE API until SIGTERM/SIGINT.

Writes ``<scratch>/pvesim.pid``, ``<scratch>/root-secret`` (0600: what the lab's
pvesh presents to act as root@pam) and, once listening, ``<scratch>/pvesim.ready``
(JSON: pid, port, cert, fingerprint). On exit every guest is stopped (no hooks:
the node goes away) and the pid and ready files are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType

from tests.lab.pvesim.api import Simulator
from tests.lab.pvesim.ha import DEFAULT_ROUND
from tests.lab.pvesim.hooks import DEFAULT_TIMEOUT
from tests.lab.pvesim.rrd import DEFAULT_INTERVAL
from tests.lab.pvesim.server import PveHTTPServer, ensure_certificate, load_tokens, make_context

log = logging.getLogger("pvesim")


def fingerprint(cert: Path) -> str:
    """Give the SHA-256 fingerprint of a PEM certificate as PVE shows it (AA:BB:...)."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def root_secret(scratch: Path) -> str:
    """Give the secret of ``<scratch>/root-secret``, writing a new one (0600) if missing."""
    path = scratch / "root-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Give the command line options."""
    p = argparse.ArgumentParser(prog="pvesim", description=__doc__)
    p.add_argument("--root", type=Path, required=True, help="config root laid out like /etc/pve")
    p.add_argument("--scratch", type=Path, required=True, help="cert, pid, logs, guest files")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--token-file", type=Path, required=True, help="user@realm!tokenid=secret")
    p.add_argument(
        "--node-root",
        action="append",
        default=[],
        metavar="NODE=DIR",
        help="DIR plays / of NODE for its node-local storages (default: this machine)",
    )
    p.add_argument("--hook-timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument(
        "--ha-round", type=float, default=DEFAULT_ROUND, help="seconds per HA round (PVE: ~10)"
    )
    p.add_argument(
        "--rrd-interval", type=float, default=DEFAULT_INTERVAL,
        help="seconds per status cycle of /cluster/resources (PVE: 10)",
    )  # fmt: skip
    p.add_argument("--no-tls", action="store_true", help="plain HTTP (debugging only)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until a signal arrives; give the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    scratch: Path = args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    pid_file, ready_file = scratch / "pvesim.pid", scratch / "pvesim.ready"
    ready_file.unlink(missing_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    nodes = sorted(p.name for p in (args.root / "nodes").glob("*") if p.is_dir())
    cert, key = ensure_certificate(scratch, nodes[0] if nodes else "localhost")
    node_roots = {}
    for item in args.node_root:
        name, _, directory = item.partition("=")
        node_roots[name] = Path(directory)
    simulator = Simulator(
        args.root, scratch, hook_timeout=args.hook_timeout, node_roots=node_roots,
        ha_round=args.ha_round, rrd_interval=args.rrd_interval,
    )  # fmt: skip
    context = None if args.no_tls else make_context(cert, key)
    server = PveHTTPServer(
        (args.bind, args.port), simulator, load_tokens(args.token_file), context,
        root_secret=root_secret(scratch),
    )  # fmt: skip
    simulator.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.warning("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever, which runs in this thread: do it elsewhere
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = server.server_address[1]
    ready = {"pid": os.getpid(), "port": port, "cert": str(cert), "fingerprint": fingerprint(cert)}
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.rename(ready_file)
    log.warning("listening on %s:%d (pid %d)", args.bind, port, os.getpid())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        simulator.shutdown_all()
        ready_file.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
