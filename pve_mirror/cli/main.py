"""Entry point of ``pve-mirror``: parse, dispatch to a command, print, exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from pve_mirror import __version__
from pve_mirror.cli import (
    cmd_drill,
    cmd_failover,
    cmd_hook,
    cmd_inventory,
    cmd_lock,
    cmd_mirror,
    cmd_site,
    cmd_sync,
)
from pve_mirror.cli.common import CommandResult, apply_defaults, common_options
from pve_mirror.errors import PveMirrorError
from pve_mirror.files import fs_error
from pve_mirror.output import render

# Each module has register(subparsers, parent) and sets ``handler`` on its parsers.
COMMAND_MODULES: list[ModuleType] = [
    cmd_inventory,
    cmd_site,
    cmd_mirror,
    cmd_sync,
    cmd_hook,
    cmd_failover,
    cmd_drill,
    cmd_lock,
]

PROG = "pve-mirror"


def build_parser() -> argparse.ArgumentParser:
    """Give the full argument parser (also used to generate the man page)."""
    parent = common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[parent],
        description="Disaster recovery for Proxmox VE on Ceph: RBD mirroring, config sync "
        "and failover between two sites.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; give the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_defaults(args)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result: CommandResult = args.handler(args)
        out = render(result.data, args.output_format, result.text)
    except PveMirrorError as exc:
        if args.debug:
            raise
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A file system refusal no action turned into a PveMirrorError (e.g. /etc/pve
        # read-only without quorum): still one line naming the file and the cause.
        if args.debug:
            raise
        error = fs_error(exc, action="access")
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line here, the traceback with --debug
        if args.debug:
            raise
        print(
            f"{PROG}: internal error (a bug): {type(exc).__name__}: {exc}; --debug shows where",
            file=sys.stderr,
        )
        return 1
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if out:
        print(out)
    sys.stdout.flush()
    return result.exit_code
