"""``site init``, ``site status``, ``site peer-lost``, ``site unfence``,
``site token create|import``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pve_mirror.actions import site, unfence
from pve_mirror.actions.context import SiteContext
from pve_mirror.cli.common import CommandResult
from pve_mirror.cli.planrun import plan_command
from pve_mirror.engine.execute_plan import StepOutcome, execute_plan
from pve_mirror.engine.lock import cluster_lock


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add ``site`` and its subcommands."""
    p_site = subparsers.add_parser("site", parents=[parent], help="pair this site with its peer")
    sub = p_site.add_subparsers(dest="site_command", metavar="<subcommand>")
    sub.required = True

    p = sub.add_parser(
        "init",
        parents=[parent],
        help="set up mirroring of the RBD pools with the peer (idempotent)",
    )
    p.add_argument("--name", help="this site's name")
    p.add_argument("--peer", help="the peer site's name")
    p.add_argument(
        "--api-url",
        metavar="URL",
        help="this site's PVE API for failover (default: pvesh on this node)",
    )
    p.add_argument("--api-token", metavar="ID", help="API token id for --api-url")
    p.add_argument(
        "--api-secret-file",
        type=Path,
        metavar="FILE",
        help="file holding that token's secret (copied, 0600)",
    )
    p.add_argument("--api-ca", type=Path, metavar="FILE", help="CA certificate of --api-url")
    p.add_argument(
        "--node", metavar="NODE",
        help="node of this site that receives guests when node memory is unknown",
    )  # fmt: skip
    p.add_argument(
        "--peer-ceph-conf",
        type=Path,
        metavar="FILE",
        help="the peer cluster's ceph.conf (copied under priv/pve-mirror/)",
    )
    p.add_argument(
        "--peer-keyring",
        type=Path,
        metavar="FILE",
        help="a keyring for the peer cluster (copied, 0600)",
    )
    p.add_argument(
        "--peer-ceph-user", metavar="ID", help="Ceph client id on the peer (default admin)"
    )
    p.add_argument("--peer-api-url", metavar="URL", help="the peer's PVE API, https://host:8006")
    p.add_argument("--peer-api-token", metavar="ID", help="API token id, user@realm!tokenid")
    p.add_argument(
        "--peer-api-secret-file",
        type=Path,
        metavar="FILE",
        help="file holding the API token secret (copied, 0600)",
    )
    p.add_argument(
        "--peer-api-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate of the peer's API (e.g. its pve-root-ca.pem)",
    )
    p.add_argument("--peer-ssh", metavar="TARGET", help="SSH target for config sync, root@host")
    p.add_argument("--peer-ssh-port", type=int, metavar="PORT")
    p.add_argument(
        "--peer-ssh-key",
        type=Path,
        metavar="FILE",
        help="a dedicated SSH key for config sync (copied, 0600)",
    )
    p.add_argument(
        "--peer-known-hosts",
        type=Path,
        metavar="FILE",
        help="known_hosts with the peer's host key (copied; enables strict checking)",
    )
    p.add_argument("--peer-node", metavar="NODE", help="node on the peer that receives guests")
    p.add_argument("--peer-root", metavar="DIR", help="the peer's config root (default /etc/pve)")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.set_defaults(handler=_init)

    p = sub.add_parser(
        "status",
        parents=[parent],
        help="pool mode, peers and rbd-mirror daemons of both sites; the PVE APIs and what "
        "their tokens lack",
    )
    p.set_defaults(handler=_status)

    p = sub.add_parser(
        "peer-lost",
        parents=[parent],
        help="declare the peer down or cut off for good: the hook then starts guests "
        "primary here without asking it",
    )
    p.add_argument(
        "--yes", action="store_true", help="write the declaration (the peer must not run them)"
    )
    p.add_argument("--dry-run", action="store_true", help="check only, write nothing")
    p.set_defaults(handler=_peer_lost)

    p = sub.add_parser(
        "unfence",
        parents=[parent],
        help="remove the fence note and the peer-lost declaration once the peer is failed "
        "back or demoted",
    )
    p.add_argument(
        "--risk-two-primaries",
        action="store_true",
        help="remove them although the peer cannot be asked or still holds primary images",
    )
    p.add_argument("--dry-run", action="store_true", help="check only, remove nothing")
    p.set_defaults(handler=_unfence)

    p_token = sub.add_parser("token", parents=[parent], help="pair by bootstrap token by hand")
    tsub = p_token.add_subparsers(dest="token_command", metavar="<subcommand>")
    tsub.required = True
    p = tsub.add_parser(
        "create",
        parents=[parent],
        help="write a bootstrap token (holds a key) to a file, mode 0600",
    )
    p.add_argument("--pool", default="rbd")
    p.add_argument("file", type=Path)
    p.set_defaults(handler=_token_create)
    p = tsub.add_parser("import", parents=[parent], help="import the peer's bootstrap token")
    p.add_argument("--pool", default="rbd")
    p.add_argument("file", type=Path)
    p.set_defaults(handler=_token_import)


def _init(args: argparse.Namespace) -> CommandResult:
    options = site.InitOptions(
        name=args.name,
        peer=args.peer,
        api_url=args.api_url,
        api_token=args.api_token,
        api_secret_file=args.api_secret_file,
        api_ca=args.api_ca,
        node=args.node,
        peer_ceph_conf=args.peer_ceph_conf,
        peer_keyring=args.peer_keyring,
        peer_ceph_user=args.peer_ceph_user,
        peer_api_url=args.peer_api_url,
        peer_api_token=args.peer_api_token,
        peer_api_secret_file=args.peer_api_secret_file,
        peer_api_ca=args.peer_api_ca,
        peer_ssh=args.peer_ssh,
        peer_ssh_port=args.peer_ssh_port,
        peer_ssh_key=args.peer_ssh_key,
        peer_known_hosts=args.peer_known_hosts,
        peer_node=args.peer_node,
        peer_root=args.peer_root,
    )
    root = Path(args.root)
    plan = site.plan_init(root, options)
    steps = site.InitSteps(root, options)

    def execute(progress: Callable[[str], None]) -> list[StepOutcome]:
        try:
            with cluster_lock(root, "site init"):
                return execute_plan(plan, steps.table(), None, concurrency=1, progress=progress)
        finally:
            if steps.ctx is not None:
                steps.ctx.close()

    return plan_command(plan, args.dry_run, execute)


def _status(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        data = site.site_status(ctx)
        bad = any(s["error"] or not s["daemons"] for s in data["sites"]) or any(
            api["problems"] for api in data.get("apis", [])
        )
        return CommandResult(
            data, text=site.render_site_status, exit_code=2 if bad else 0, warnings=ctx.warnings
        )


def _peer_lost(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        data = unfence.peer_lost(ctx, yes=args.yes, dry_run=args.dry_run)
        return CommandResult(data, text=unfence.render_peer_lost, warnings=ctx.warnings)


def _unfence(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        data = unfence.unfence(ctx, risk=args.risk_two_primaries, dry_run=args.dry_run)
        return CommandResult(
            data, text=unfence.render_unfence, warnings=ctx.warnings + data["warnings"]
        )


def _token_create(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        path = site.token_create(ctx, args.pool, args.file)
        return CommandResult(
            {"token_file": path},
            text=lambda _d: f"bootstrap token written to {path} (keep it secret)",
        )


def _token_import(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        detail = site.token_import(ctx, args.pool, args.file)
        return CommandResult({"result": detail}, text=lambda _d: detail)
