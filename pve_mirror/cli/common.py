"""What every command module of the CLI shares: the result type and common arguments."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pve_mirror.errors import UsageError
from pve_mirror.output import FORMATS

DEFAULT_ROOT = "/etc/pve"
GUEST_TYPES = ("vm", "ct")


@dataclass
class CommandResult:
    """What a command gives back: data for json/yaml, its text form, and an exit code."""

    data: Any
    text: Callable[[Any], str] = field(default=lambda data: str(data))
    exit_code: int = 0
    # One line each on stderr (e.g. a bad storage.cfg line that was skipped).
    warnings: list[str] = field(default_factory=list)


Handler = Callable[[argparse.Namespace], CommandResult]


def common_options() -> argparse.ArgumentParser:
    """Give a parent parser with the options every command accepts, before or after its name.

    Defaults are SUPPRESSed here so that an option given before the command name is
    not overwritten by the subcommand's default; :func:`apply_defaults` fills them in.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help=f"PVE config root (default: $PVE_MIRROR_ROOT or {DEFAULT_ROOT})",
    )
    parent.add_argument(
        "--output-format",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="output format (default: text)",
    )
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show debug logging and tracebacks",
    )
    return parent


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill in the common options that were not given."""
    if getattr(args, "root", None) is None:
        args.root = os.environ.get("PVE_MIRROR_ROOT") or DEFAULT_ROOT
    if getattr(args, "output_format", None) is None:
        args.output_format = "text"
    if getattr(args, "debug", None) is None:
        args.debug = False


def add_guest_arguments(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """Add the pvesh-style ``vm|ct <vmid>`` positionals (``many``: one or more vmids)."""
    parser.add_argument("guest_type", choices=GUEST_TYPES, metavar="vm|ct", help="guest type")
    parser.add_argument(
        "vmids", nargs="+" if many else 1, type=parse_vmid, metavar="vmid", help="guest ID"
    )


def parse_vmid(text: str) -> int:
    """Give the VMID in ``text``; raises ArgumentTypeError unless it is 100..999999999."""
    if not text.isdigit() or not 100 <= int(text) <= 999_999_999:
        raise argparse.ArgumentTypeError(f"invalid vmid {text!r} (expected 100 to 999999999)")
    return int(text)


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless ``condition``."""
    if not condition:
        raise UsageError(message)


def write_generated(render: Callable[[argparse.ArgumentParser], str], argv: list[str]) -> int:
    """Render a file from the full parser (man page, completion) to ``argv[0]`` or stdout.

    Gives 0. Used at package build time.
    """
    # Imported here: main imports every command module, and they import this module.
    from pve_mirror.cli.main import build_parser

    text = render(build_parser())
    if argv:
        with open(argv[0], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0
