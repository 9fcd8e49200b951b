"""How a plan-driven command prints: the plan, progress on stderr, then the outcome.

``--dry-run`` prints the plan and stops. Otherwise the plan goes to stderr first (so
that the admin sees what is about to happen even with ``--output-format json``),
each finished step is a progress line on stderr, and stdout gets the summary.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from pve_mirror.cli.common import CommandResult
from pve_mirror.engine.execute_plan import ALREADY_DONE, DONE, StepOutcome
from pve_mirror.engine.plan import Plan

Executor = Callable[[Callable[[str], None]], list[StepOutcome]]


def progress_to_stderr(line: str) -> None:
    """Print one progress line on stderr at once."""
    print(line, file=sys.stderr, flush=True)


def plan_command(
    plan: Plan,
    dry_run: bool,
    execute: Executor,
    *,
    extra: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> CommandResult:
    """Give the result of a plan-driven command: the plan (dry run) or the outcomes.

    The exit code is 1 when any step failed or was skipped.
    """
    data: dict[str, Any] = {"plan": plan.to_dict(), "dry_run": dry_run}
    if extra:
        data.update(extra)
    if dry_run or not plan.steps:
        return CommandResult(data, text=lambda _d: plan.render_text(), warnings=warnings or [])
    progress_to_stderr(plan.render_text())
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
