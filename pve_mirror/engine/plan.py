"""A plan is a list of steps: pure data, printable, what ``--dry-run`` shows.

Steps carry a ``kind`` and plain string parameters; the action that built the plan
also supplies the function for each kind. Steps run phase by phase; the steps of
one phase run concurrently (one per guest or image) with a bound.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    """One unit of work.

    ``id`` is stable across runs of the same command (the journal keys on it);
    ``subject`` is what the step acts on (``vm:100``, ``rbd/vm-100-disk-0``);
    ``group`` is the guest whose later steps are skipped when this one fails.
    """

    id: str
    kind: str
    phase: int
    description: str
    subject: str
    group: str
    params: tuple[tuple[str, str], ...] = ()
    mutates: bool = True

    def param(self, name: str) -> str:
        """Give the parameter ``name``; raises KeyError if the plan did not set it."""
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"step {self.id} has no parameter {name!r}")

    def flag(self, name: str) -> bool:
        """Give a yes/no parameter (set from a bool by :func:`step`); KeyError if unset."""
        return self.param(name) == "1"

    def to_dict(self) -> dict[str, Any]:
        """Give the step as plain data for json/yaml output."""
        return {
            "id": self.id,
            "phase": self.phase,
            "kind": self.kind,
            "subject": self.subject,
            "guest": self.group,
            "description": self.description,
            "mutates": self.mutates,
            "params": dict(self.params),
        }


def step(
    kind: str,
    phase: int,
    subject: str,
    group: str,
    description: str,
    *,
    mutates: bool = True,
    **params: str | int | bool,
) -> Step:
    """Give a Step whose id is ``kind:subject``.

    Parameters are kept as text (the journal's fingerprint covers them): a bool as
    ``"1"``/``""`` (read back with :meth:`Step.flag`), a number in decimal.
    """
    return Step(
        id=f"{kind}:{subject}",
        kind=kind,
        phase=phase,
        description=description,
        subject=subject,
        group=group,
        params=tuple(sorted((key, _text(value)) for key, value in params.items())),
        mutates=mutates,
    )


@dataclass
class Plan:
    """An ordered list of steps with a title and the notes shown before them."""

    action: str
    title: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The ids of ``steps``, so that planning 1,000 steps is not quadratic.
    _ids: set[str] = field(default_factory=set, repr=False, compare=False)

    def has(self, step_id: str) -> bool:
        """Tell whether a step with that id is planned."""
        if len(self._ids) != len(self.steps):
            self._ids = {s.id for s in self.steps}
        return step_id in self._ids

    def add(self, new: Step) -> None:
        """Append ``new``; raises ValueError if a step with its id is already planned."""
        if self.has(new.id):
            raise ValueError(f"step {new.id} planned twice")
        self.steps.append(new)
        self._ids.add(new.id)

    def phases(self) -> list[list[Step]]:
        """Give the steps grouped by phase, in phase order, keeping plan order within one."""
        numbers = sorted({s.phase for s in self.steps})
        return [[s for s in self.steps if s.phase == n] for n in numbers]

    def fingerprint(self) -> str:
        """Give a short hash of what the plan does: reruns of the same command share it.

        It covers each step's id, kind, phase, guest and parameters, not its wording: a
        description may say why (a guest's node "by the node map" on the first run, "its
        old config is there" on the rerun) while the step does the same.
        """
        body = json.dumps(
            [self.action, [s.to_dict() | {"description": ""} for s in self.steps]],
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Give the plan as plain data."""
        return {
            "action": self.action,
            "title": self.title,
            "notes": list(self.notes),
            "steps": [s.to_dict() for s in self.steps],
        }

    def render_text(self) -> str:
        """Give the plan as numbered lines, one per step, grouped by phase."""
        lines = [f"Plan: {self.title}"]
        lines += [f"  note: {n}" for n in self.notes]
        if not self.steps:
            lines.append("  (nothing to do)")
        number = 0
        for phase in self.phases():
            for s in phase:
                number += 1
                lines.append(f"  {number:3d}. [{s.group}] {s.description}")
        return "\n".join(lines)


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)
