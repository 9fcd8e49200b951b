"""Bash completion for pve-mirror, generated from the CLI's own argument parser.

The Debian build runs ``python3 -m pve_mirror.cli.completion OUTPUT``; the script is
static (tables of commands, options and choices) so completing never starts Python.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from pve_mirror.cli.common import write_generated
from pve_mirror.cli.manpage import (
    option_takes_value,
    subcommand_names,
    visible_actions,
    walk_commands,
)

_FUNCTION = r"""
_pve_mirror() {
    local cur prev path="@" npos=0 i w
    local -A subs opts takes pos optchoices
%(tables)s
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev=""
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    # Find the command path typed so far; skip option values and count positionals.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if [[ $w == -* ]]; then
            [[ -n ${takes["$path|$w"]+x} && $w != *=* ]] && ((i++))
        elif [[ " ${subs["$path"]} " == *" $w "* ]]; then
            path="$path $w"
            npos=0
        else
            ((npos++))
        fi
    done
    if [[ -n $prev && $prev == -* && -n ${takes["$path|$prev"]+x} ]]; then
        if [[ -n ${optchoices["$path|$prev"]+x} ]]; then
            mapfile -t COMPREPLY < <(compgen -W "${optchoices["$path|$prev"]}" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${opts["$path"]}" -- "$cur")
    elif [[ -n ${subs["$path"]} ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${subs["$path"]}" -- "$cur")
    elif [[ -n ${pos["$path|$npos"]+x} ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${pos["$path|$npos"]}" -- "$cur")
    fi
    return 0
}
complete -F _pve_mirror %(prog)s
"""


def render_bash_completion(parser: argparse.ArgumentParser) -> str:
    """Give a bash completion script for every command and option of ``parser``."""
    tables: list[str] = []
    parsers = [((), parser), *((c.path, c.parser) for c in walk_commands(parser))]
    for path, sub in parsers:
        key = " ".join(("@", *path))  # "@" is the program itself: bash keys cannot be empty
        subs = subcommand_names(sub)
        if subs:
            tables.append(_assign("subs", key, subs))
        actions = visible_actions(sub)
        options = [s for a in actions for s in a.option_strings]
        tables.append(_assign("opts", key, options))
        npos = 0
        for action in actions:
            if action.option_strings:
                if not option_takes_value(action):
                    continue
                for option in action.option_strings:
                    tables.append(_assign("takes", f"{key}|{option}", []))
                    if _choices(action):
                        tables.append(_assign("optchoices", f"{key}|{option}", _choices(action)))
            else:
                if _choices(action):
                    tables.append(_assign("pos", f"{key}|{npos}", _choices(action)))
                npos += 1
    return (
        "# bash completion for pve-mirror; generated from its argument parser, do not edit\n"
        + _FUNCTION.lstrip("\n") % {"tables": "\n".join(tables), "prog": shlex.quote(parser.prog)}
    )


def _choices(action: argparse.Action) -> list[str]:
    if action.choices is None or isinstance(action.choices, dict):
        return []
    return [str(c) for c in action.choices]


def _assign(table: str, key: str, words: list[str]) -> str:
    return f"    {table}[{shlex.quote(key)}]={shlex.quote(' '.join(words))}"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the completion script to the file given as the only argument (or stdout)."""
    return write_generated(render_bash_completion, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
