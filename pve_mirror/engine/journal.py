"""The journal: each step is recorded before and after it runs, so a rerun continues.

A journal is an append-only JSON-lines file named after the plan's fingerprint, so
rerunning the same command after a crash finds it; once every step is done it is
marked finished and a later run of the same command starts afresh.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pve_mirror.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One recorded event of a step."""

    step: str
    event: str  # "start", "done", "failed"
    detail: str
    at: float


class Journal:
    """The record of one plan's execution under ``directory``."""

    def __init__(self, directory: Path, action: str, fingerprint: str) -> None:
        self.directory = directory
        self.path = directory / f"{action}-{fingerprint}.jsonl"
        self.finished_path = self.path.with_suffix(".done")

    def entries(self) -> list[Entry]:
        """Give the recorded events; raises ConfigError naming the line if the file is corrupt.

        A torn last line (the process died while writing it) is ignored.
        """
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        out: list[Entry] = []
        for number, line in enumerate(lines, start=1):
            try:
                raw = json.loads(line)
                out.append(Entry(raw["step"], raw["event"], raw.get("detail", ""), raw["at"]))
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    break
                raise ConfigError(f"corrupt journal entry: {exc}", str(self.path), number) from exc
        return out

    def done_steps(self) -> dict[str, str]:
        """Give the ids of steps recorded as done, with their result detail."""
        return {e.step: e.detail for e in self.entries() if e.event == "done"}

    def exists(self) -> bool:
        """Tell whether an unfinished run of this plan left a journal."""
        return self.path.exists()

    def record(self, step_id: str, event: str, detail: str = "") -> None:
        """Append one event and flush it to disk before returning."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": step_id, "event": event, "detail": detail, "at": time.time()})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        """Mark the run finished: the journal is kept for the record under a new name."""
        if self.path.exists():
            os.replace(self.path, self.finished_path)

    def summary(self) -> dict[str, Any]:
        """Give the path and the per-step last event, for status output."""
        last: dict[str, str] = {}
        for entry in self.entries():
            last[entry.step] = entry.event
        return {"path": str(self.path), "steps": last}
