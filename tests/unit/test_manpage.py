"""The man page and bash completion generated from the argument parser."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pve_mirror.cli.completion import render_bash_completion
from pve_mirror.cli.main import build_parser
from pve_mirror.cli.manpage import render_manpage, walk_commands

BASH = shutil.which("bash")
MAN = shutil.which("man")


def _sample_parser() -> argparse.ArgumentParser:
    """A parser shaped like the planned CLI: nested subcommands, groups, choices, nargs."""
    parser = argparse.ArgumentParser(prog="pve-mirror", description="Sample tool. More text.")
    parser.add_argument("--output-format", choices=["text", "json"], default="text")
    subs = parser.add_subparsers(dest="command", metavar="<command>")
    site = subs.add_parser("site", help="pair the sites")
    site_subs = site.add_subparsers(dest="site_command")
    site_subs.add_parser("init", help="create this site's configuration")
    token = site_subs.add_parser("token", help="peer tokens")
    token_subs = token.add_subparsers(dest="token_command")
    token_subs.add_parser("create", help="print a token")
    imp = token_subs.add_parser("import", help="read a token")
    imp.add_argument("file", help="token file, - for stdin")
    enable = subs.add_parser("enable", help="enable mirroring")
    enable.add_argument("guest_type", choices=["vm", "ct"], metavar="vm|ct")
    enable.add_argument("vmids", nargs="+", metavar="vmid")
    enable.add_argument("--mode", choices=["snapshot", "journal"], help="mirror mode")
    enable.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    failover = subs.add_parser("failover", help="move guests to this site")
    how = failover.add_mutually_exclusive_group(required=True)
    how.add_argument("--planned", action="store_true", help="demote the other site first")
    how.add_argument("--force", action="store_true", help="the other site is gone")
    failover.add_argument("--prometheus", metavar="FILE", help="write 100%% of metrics to FILE")
    return parser


def _command_paths(parser: argparse.ArgumentParser) -> list[str]:
    """Give every command path, found through argparse's public help (not the walker)."""
    paths: list[str] = []

    def visit(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append(" ".join([*prefix, name]))
                    visit(sub, [*prefix, name])

    visit(parser, [])
    return paths


def _unroff(page: str) -> str:
    return page.replace("\\-", "-").replace("\\e", "\\")


@pytest.mark.parametrize("make_parser", [build_parser, _sample_parser])
def test_every_command_and_option_is_in_the_page(
    make_parser: Callable[[], argparse.ArgumentParser],
) -> None:
    parser = make_parser()
    page = _unroff(render_manpage(parser, date="2025-01-01"))
    paths = _command_paths(parser)
    assert paths
    for path in paths:
        assert f'.SS "pve-mirror {path}"' in page
    for command in walk_commands(parser):
        for action in command.parser._actions:
            for option in action.option_strings:
                assert option in page, (command.path, option)


def test_page_header_and_sections() -> None:
    page = render_manpage(_sample_parser(), date="2025-01-01", version="9.9")
    assert page.startswith('.TH "PVE\\-MIRROR" "1" "2025-01-01" "pve\\-mirror 9.9"')
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page
    assert "\npve\\-mirror \\- sample tool\n" in page
    # Mutually exclusive, required options are shown as one choice; percent signs expanded.
    assert "(\\fB\\-\\-planned\\fR | \\fB\\-\\-force\\fR)" in page
    assert "write 100% of metrics" in page
    assert "\\fIvmid\\fR \\&..." in page


def test_no_unescaped_minus_and_no_stray_requests() -> None:
    page = render_manpage(build_parser(), date="2025-01-01")
    known = re.compile(r"^\.(TH|SH|SS|TP|PP|br|B|I|BR) ?")
    for line in page.splitlines():
        if line.startswith((".", "'")):
            assert known.match(line), line
        assert not re.search(r"(?<!\\)-", line.split('"2025-01-01"')[0]), line


def test_date_comes_from_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert '"2023-11-14"' in render_manpage(_sample_parser())


@pytest.mark.skipif(MAN is None, reason="man is not installed")
def test_man_renders_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "pve-mirror.1"
    page.write_text(render_manpage(build_parser()), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    result = subprocess.run(
        [str(MAN), "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = subprocess.run(
        [str(MAN), "-P", "cat", "-l", str(page)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    assert "pve-mirror guests" in shown


def _complete(script: str, words: list[str]) -> list[str]:
    """Give what the completion script offers for ``words`` (the last one is being typed)."""
    assert BASH is not None
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _pve_mirror; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        [BASH, "--norc", "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stderr == ""
    return sorted(line for line in result.stdout.splitlines() if line)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_completion_follows_nested_commands_options_and_choices() -> None:
    script = render_bash_completion(_sample_parser())
    assert _complete(script, ["pve-mirror", ""]) == ["enable", "failover", "site"]
    assert _complete(script, ["pve-mirror", "site", "t"]) == ["token"]
    assert _complete(script, ["pve-mirror", "site", "token", ""]) == ["create", "import"]
    assert _complete(script, ["pve-mirror", "--output-format", "json", "en"]) == ["enable"]
    assert _complete(script, ["pve-mirror", "--output-format", ""]) == ["json", "text"]
    assert _complete(script, ["pve-mirror", "enable", ""]) == ["ct", "vm"]
    assert _complete(script, ["pve-mirror", "enable", "vm", "100", "--mode", ""]) == [
        "journal",
        "snapshot",
    ]
    assert _complete(script, ["pve-mirror", "enable", "vm", "--d"]) == ["--dry-run"]
    assert _complete(script, ["pve-mirror", "failover", "--p"]) == ["--planned", "--prometheus"]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_completion_of_the_real_parser_offers_every_command() -> None:
    parser = build_parser()
    top = sorted({path.split()[0] for path in _command_paths(parser)})
    assert _complete(render_bash_completion(parser), ["pve-mirror", ""]) == top
