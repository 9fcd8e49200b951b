"""The sender's mirror mode and schedule travel in the manifest and are read back checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pve_mirror.actions.staging import load_staged
from tests.unit.pvetree import VM_100
from tests.unit.test_staging import receiver, stage


def _staged_with(tmp_path: Path, mirror: object) -> tuple[list[str], object, object]:
    root = receiver(tmp_path)
    directory = stage(root, {"qemu-server/100.conf": VM_100.encode()})
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["qemu-server/100.conf"]["mirror"] = mirror
    (directory / "manifest.json").write_text(json.dumps(manifest))
    guest = load_staged(root, "site-a").guests[0]
    return guest.problems, guest.mirror_mode, guest.mirror_schedule


def test_mode_and_schedule_are_read(tmp_path: Path) -> None:
    assert _staged_with(tmp_path, {"mode": "journal", "schedule": None}) == ([], "journal", None)


def test_a_schedule_is_read(tmp_path: Path) -> None:
    assert _staged_with(tmp_path, {"mode": "snapshot", "schedule": "1m"}) == ([], "snapshot", "1m")


def test_an_older_sender_says_nothing(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    stage(root, {"qemu-server/100.conf": VM_100.encode()})
    guest = load_staged(root, "site-a").guests[0]
    assert (guest.ok, guest.mirror_mode, guest.mirror_schedule) == (True, None, None)


@pytest.mark.parametrize(
    "mirror",
    [
        {"mode": "rsync", "schedule": None},
        {"mode": "snapshot", "schedule": "1m; rm -rf /"},
        {"mode": "snapshot", "schedule": 5},
        "snapshot",
    ],
)
def test_invalid_settings_are_a_problem(tmp_path: Path, mirror: object) -> None:
    problems, mode, schedule = _staged_with(tmp_path, mirror)
    assert len(problems) == 1 and "manifest.json: invalid" in problems[0], problems
    assert (mode, schedule) == (None, None)
