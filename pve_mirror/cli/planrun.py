"""How a plan-driven command prints: the plan, progress on stderr, then the outcome.

``--dry-run`` prints the plan and stops. Otherwise the plan goes to stderr first,
each finished step is a progress line on stderr, and stdout gets the summary.

Commands that pass their output format (enable, disable, reconcile) are quiet on
stderr with json/yaml (the plan and the outcome are in the output); with text, a
plan of more than :data:`LIST_STEPS_UP_TO` steps is summed up in one line, and on a
terminal the progress is one line kept up to date (failures keep a line each).
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from pve_mirror.cli.common import CommandResult
from pve_mirror.engine.execute_plan import ALREADY_DONE, DONE, StepOutcome
from pve_mirror.engine.plan import Plan

Executor = Callable[[Callable[[str], None]], list[StepOutcome]]


LIST_STEPS_UP_TO = 40
_COUNTER = re.compile(r"\[(\d+)/(\d+)\] (\S+?):")


def progress_to_stderr(line: str) -> None:
    """Print one progress line on stderr at once."""
    print(line, file=sys.stderr, flush=True)


class TerminalProgress:
    """Progress lines (``[n/total] status: what``) on a terminal: one line redrawn at
    most ten times a second; a failed or skipped step, or any other line, is printed
    for good."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = max(20, shutil.get_terminal_size().columns - 1)
        self.lock = threading.Lock()
        self.drawn = 0.0
        self.open = False

    def __call__(self, line: str) -> None:
        match = _COUNTER.match(line)
        with self.lock:
            if match is None or match.group(3) not in ("done", "already-done"):
                self._clear()
                self.stream.write(line + "\n")
            elif match.group(1) == match.group(2) or time.monotonic() - self.drawn >= 0.1:
                self.stream.write("\r\033[K" + line[: self.width])
                self.drawn, self.open = time.monotonic(), True
            self.stream.flush()

    def _clear(self) -> None:
        if self.open:
            self.stream.write("\r\033[K")
            self.open = False

    def close(self) -> None:
        """End the redrawn line (the last state stays on screen)."""
        with self.lock:
            if self.open:
                self.stream.write("\n")
                self.stream.flush()
                self.open = False


def plan_summary(plan: Plan) -> str:
    """Give the plan as text: every step up to LIST_STEPS_UP_TO, else a count."""
    if len(plan.steps) <= LIST_STEPS_UP_TO:
        return plan.render_text()
    lines = [f"Plan: {plan.title}"] + [f"  note: {n}" for n in plan.notes]
    guests = len({s.group for s in plan.steps})
    lines.append(f"  {len(plan.steps)} steps for {guests} guest(s); --dry-run lists them")
    return "\n".join(lines)


def plan_command(
    plan: Plan,
    dry_run: bool,
    execute: Executor,
    *,
    extra: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    output_format: str | None = None,
) -> CommandResult:
    """Give the result of a plan-driven command: the plan (dry run) or the outcomes.

    Without ``output_format`` the whole plan and a line per step go to stderr; with
    it, see the module's docstring. The exit code is 1 when any step failed or was
    skipped.
    """
    data: dict[str, Any] = {"plan": plan.to_dict(), "dry_run": dry_run}
    if extra:
        data.update(extra)
    if dry_run or not plan.steps:
        return CommandResult(data, text=lambda _d: plan.render_text(), warnings=warnings or [])
    if output_format is None:
        progress_to_stderr(plan.render_text())
        outcomes = execute(progress_to_stderr)
    elif output_format != "text":
        outcomes = execute(lambda _line: None)
    else:
        progress_to_stderr(plan_summary(plan))
        if sys.stderr.isatty():
            terminal = TerminalProgress(sys.stderr)
            try:
                outcomes = execute(terminal)
            finally:
                terminal.close()
        else:
            outcomes = execute(progress_to_stderr)
    data["outcomes"] = [o.to_dict() for o in outcomes]
    failed = [o for o in outcomes if o.status not in (DONE, ALREADY_DONE)]
    data["ok"] = not failed
    return CommandResult(
        data,
        text=lambda _d: summary_text(plan, outcomes),
        exit_code=1 if failed else 0,
        warnings=warnings or [],
    )


def summary_text(plan: Plan, outcomes: list[StepOutcome]) -> str:
    """Give one line per guest: done, or the first failure and what was skipped."""
    lines = []
    groups: dict[str, list[StepOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.step.group, []).append(outcome)
    for group, items in groups.items():
        failed = [o for o in items if o.status == "failed"]
        skipped = [o for o in items if o.status == "skipped"]
        if failed:
            lines.append(
                f"{group}: FAILED: {failed[0].step.description}: {failed[0].detail}"
                + (f" ({len(skipped)} later step(s) skipped)" if skipped else "")
            )
        else:
            lines.append(f"{group}: OK ({len(items)} step(s))")
    return f"{plan.title}\n" + "\n".join(lines)
