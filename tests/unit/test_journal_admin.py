"""Journals: format version and age limit of a continued run; journal list|discard."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pve_mirror.cli.main import main
from pve_mirror.engine.execute_plan import run_journalled
from pve_mirror.engine.journal import (
    FORMAT_VERSION,
    MAX_AGE_S,
    Journal,
    unfinished,
    unfinished_warnings,
)
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import PolicyError


def _journal(root: Path, action: str = "failover") -> Journal:
    journal = Journal(root / "pve-mirror" / "journal", action, "0123456789abcdef")
    journal.begin("failover vm 100")
    journal.record("stop-source:vm:100", "done", "stopped")
    return journal


def test_a_recent_journal_of_this_version_is_continued(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.begin("failover vm 100")  # a rerun: no error, nothing rewritten
    assert journal.header()["version"] == FORMAT_VERSION
    assert journal.done_steps() == {"stop-source:vm:100": "stopped"}


def test_an_old_journal_is_refused_with_how_to_discard_it(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    old = time.time() - MAX_AGE_S - 3600
    os.utime(journal.path, (old, old))
    with pytest.raises(PolicyError, match="journal discard failover-0123456789abcdef"):
        journal.begin("failover vm 100")
    journal.check_resumable(now=old + 60)  # the same journal, seen a minute after


def test_a_journal_of_another_format_is_refused(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    lines = journal.path.read_text().splitlines()
    header = json.loads(lines[0])
    header["version"] = FORMAT_VERSION + 1
    journal.path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(PolicyError, match=f"format {FORMAT_VERSION + 1}"):
        journal.begin("failover vm 100")


def test_list_and_discard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = _journal(tmp_path, "drill-start")
    done = Journal(journal.directory, "enable", "fedcba9876543210")
    done.begin("enable vm 1")
    done.finish()
    assert [j.stem for j in unfinished(journal.directory)] == [journal.stem]
    assert main(["--root", str(tmp_path), "journal", "list", "--output-format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "drill-start-0123456789abcdef" and row["steps_done"] == 1
    assert row["title"] == "failover vm 100" and row["resumable"] is True
    (warning,) = unfinished_warnings(tmp_path)
    assert "unfinished run drill-start-0123456789abcdef: failover vm 100" in warning
    assert main(["--root", str(tmp_path), "journal", "discard", "nope-1"]) == 3
    assert main(["--root", str(tmp_path), "journal", "discard", journal.stem]) == 0
    assert "Discarded drill-start-0123456789abcdef (1 file(s))" in capsys.readouterr().out
    assert not journal.exists() and done.finished_path.exists()
    assert main(["--root", str(tmp_path), "journal", "list"]) == 0
    assert "No unfinished runs." in capsys.readouterr().out
    assert unfinished_warnings(tmp_path) == []


def test_a_run_refuses_an_old_journal_before_any_step(tmp_path: Path) -> None:
    plan = Plan("failover", "failover vm 100")
    plan.add(step("start", 1, "vm:100", "vm:100", "start vm:100"))
    journal = Journal(tmp_path / "pve-mirror" / "journal", plan.action, plan.fingerprint())
    journal.begin(plan.title)
    old = time.time() - MAX_AGE_S - 60
    os.utime(journal.path, (old, old))
    ran: list[str] = []
    said: list[str] = []

    def start(item: Step) -> str:
        ran.append(item.id)
        return "started"

    with pytest.raises(PolicyError, match="too old to continue"):
        run_journalled(
            tmp_path, plan, {"start": start},
            concurrency=1, progress=said.append,
        )  # fmt: skip
    assert ran == [] and said == []
    assert not (tmp_path / "pve-mirror" / "lock").exists()
