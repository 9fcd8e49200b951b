"""The pve-mirror(1) man page, generated from the CLI's own argument parser.

The Debian build runs ``python3 -m pve_mirror.cli.manpage OUTPUT`` so that every
command added to :func:`pve_mirror.cli.main.build_parser` shows up in the man page
without anyone editing it by hand.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pve_mirror import __version__
from pve_mirror.cli.common import write_generated


@dataclass(frozen=True)
class Command:
    """One (sub)command: its words after the program name, its parser and one-line help."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str


def walk_commands(parser: argparse.ArgumentParser) -> Iterator[Command]:
    """Give every command reachable from ``parser``, depth first, in definition order.

    A command with subcommands (``site token``) is given before its subcommands.
    """
    yield from _walk(parser, ())


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[Command]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            # Aliases map to the same parser: document each parser once.
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            sub_path = (*path, name)
            yield Command(sub_path, sub, str(helps.get(name, "")))
            yield from _walk(sub, sub_path)


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    """Give the names (with aliases) of the direct subcommands of ``parser``."""
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names.extend(action.choices)
    return names


def option_takes_value(action: argparse.Action) -> bool:
    """Tell whether an optional argument is followed by a value (``--mode journal``)."""
    return action.nargs != 0


def visible_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Give the documented arguments of ``parser`` (no subcommand selectors, no SUPPRESSed)."""
    return [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)
    ]


def global_option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Give the option strings of the top-level parser (documented once, under OPTIONS)."""
    return {s for action in parser._actions for s in action.option_strings}


def render_manpage(
    parser: argparse.ArgumentParser,
    *,
    date: str | None = None,
    version: str = __version__,
) -> str:
    """Give the man page (section 1, roff) for the program of ``parser``.

    ``date`` is the page's date (YYYY-MM-DD); by default from $SOURCE_DATE_EPOCH (so
    that package builds are reproducible) or today.
    """
    prog = parser.prog
    common = global_option_strings(parser)
    description = parser.description or ""
    lines = [
        f'.TH "{_text(prog.upper())}" "1" "{date or _default_date()}" '
        f'"{_text(prog)} {_text(version)}" "User Commands"',
        ".SH NAME",
        f"{_text(prog)} \\- {_text(_first_sentence(description))}",
        ".SH SYNOPSIS",
        f".B {_text(prog)}",
        "[\\fIoptions\\fR] \\fIcommand\\fR [\\fIarguments\\fR]",
        ".SH DESCRIPTION",
        *_paragraphs(description),
        ".PP",
        "Every option under \\fBOPTIONS\\fR is accepted before or after the command name.",
        ".SH OPTIONS",
    ]
    for action in visible_actions(parser):
        lines.extend(_describe_action(parser, action))
    lines.append(".SH COMMANDS")
    for command in walk_commands(parser):
        lines.extend(_describe_command(prog, command, common))
    lines.extend(
        [
            ".SH EXIT STATUS",
            "0 on success; non\\-zero with a one\\-line message on standard error otherwise.",
            ".SH FILES",
            ".TP",
            ".I /etc/pve/pve\\-mirror.cfg",
            "The site configuration; the systemd units do nothing while it is missing.",
            ".TP",
            ".I /usr/share/pve\\-mirror/hooks/pve\\-mirror\\-hook",
            "The guest hookscript.",
            ".TP",
            ".I /usr/share/doc/pve\\-mirror/",
            "The administrator's guide and the list of commands with examples.",
            ".SH SEE ALSO",
            ".BR rbd (8),",
            ".BR rbd\\-mirror (8),",
            ".BR systemd.timer (5)",
        ]
    )
    return "\n".join(lines) + "\n"


def _describe_command(prog: str, command: Command, common: set[str]) -> list[str]:
    own = [a for a in visible_actions(command.parser) if not set(a.option_strings) & common]
    words = " ".join(command.path)
    lines = [f'.SS "{_text(prog)} {_text(words)}"']
    lines.append(f"\\fB{_text(prog)} {_text(words)}\\fR {_synopsis(command.parser, own)}".rstrip())
    lines.append(".br")
    text = command.parser.description or command.help
    lines.extend(_paragraphs(text)[1:] if text else [])
    subs = subcommand_names(command.parser)
    if subs:
        lines.append(".PP")
        lines.append("Subcommands: " + ", ".join(f"\\fB{_text(s)}\\fR" for s in subs) + ".")
    for action in own:
        lines.extend(_describe_action(command.parser, action))
    return lines


def _synopsis(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> str:
    """Give the argument synopsis of one command (roff), grouping mutually exclusive options."""
    parts: list[str] = []
    grouped: set[int] = set()
    for group in parser._mutually_exclusive_groups:
        members = [a for a in group._group_actions if a in actions]
        if len(members) < 2:
            continue
        grouped.update(id(a) for a in members)
        inner = " | ".join(_usage_of(a, bracket=False) for a in members)
        parts.append(f"({inner})" if group.required else f"[{inner}]")
    for action in actions:
        if id(action) in grouped or isinstance(action, argparse._HelpAction):
            continue
        parts.append(_usage_of(action, bracket=not action.required))
    if subcommand_names(parser):
        parts.append("\\fIsubcommand\\fR")
    return " ".join(parts)


def _usage_of(action: argparse.Action, *, bracket: bool) -> str:
    if action.option_strings:
        text = f"\\fB{_text(action.option_strings[-1])}\\fR"
        if option_takes_value(action):
            text += f" \\fI{_text(_metavar(action))}\\fR"
        return f"[{text}]" if bracket else text
    text = f"\\fI{_text(_metavar(action))}\\fR"
    if action.nargs in ("+", "*"):
        text += " \\&..."
    if action.nargs in ("?", "*"):
        text = f"[{text}]"
    return text


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    if action.choices is not None and not isinstance(action.choices, dict):
        return "|".join(str(c) for c in action.choices)
    return action.dest.upper() if action.option_strings else action.dest


def _describe_action(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    if action.option_strings:
        value = f" \\fI{_text(_metavar(action))}\\fR" if option_takes_value(action) else ""
        head = ", ".join(f"\\fB{_text(s)}\\fR{value}" for s in action.option_strings)
    else:
        head = f"\\fI{_text(_metavar(action))}\\fR"
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices is not None and not isinstance(action.choices, dict):
        choices = ", ".join(str(c) for c in action.choices)
        if _metavar(action) != "|".join(str(c) for c in action.choices):
            help_text = f"{help_text} (one of: {choices})".strip()
    return [".TP", head, _text(help_text) if help_text else "\\&"]


def _paragraphs(text: str) -> list[str]:
    """Give ``text`` as roff paragraphs; blank lines separate paragraphs."""
    lines: list[str] = []
    for block in text.split("\n\n"):
        joined = " ".join(block.split())
        if joined:
            lines.extend([".PP", _text(joined)])
    return lines


def _first_sentence(text: str) -> str:
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    if first[:2].istitle():  # "Disaster recovery" reads as "disaster recovery" after the dash
        first = first[0].lower() + first[1:]
    return first or "disaster recovery for Proxmox VE on Ceph"


def _text(text: str) -> str:
    """Escape ``text`` for a roff text line: backslashes, minus signs, leading dots."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    if escaped.startswith((".", "'")):
        escaped = "\\&" + escaped
    return escaped


def _default_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), tz=datetime.UTC)
        if epoch and epoch.isdigit()
        else datetime.datetime.now(tz=datetime.UTC)
    )
    return when.strftime("%Y-%m-%d")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the man page to the file given as the only argument (or stdout); give 0."""
    return write_generated(render_manpage, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
