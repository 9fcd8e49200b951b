"""The journal: each finished step is recorded, so a rerun after a crash continues.

A journal is named after the plan's fingerprint, so rerunning the same command finds
it; once every step is done it is marked finished and a later run of the same command
starts afresh.

It lives on pmxcfs, which refuses a file past 1 MiB and stores every write of a file
whole (and sends it to every node). So it holds only what a rerun needs: one short
JSON line per step that finished (done, or failed), none when a step starts; and it
is split into segments of at most :data:`SEGMENT_BYTES`: ``<action>-<fp>.jsonl``,
then ``<action>-<fp>.1.jsonl``, ``.2.jsonl``... Each file stays far below 1 MiB
whatever the number of guests. Finished journals are kept for the record: the
newest :data:`KEEP_FINISHED` runs, at most :data:`KEEP_FINISHED_BYTES` in all.

An unfinished journal is continued only if this version wrote it (the ``begin``
header's ``version``) and its last record is at most :data:`MAX_AGE_S` old: a run
left a week ago met a cluster that has changed since. Such a run is refused with a
line saying how to look at it and discard it (``pve-mirror journal list|discard``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from pve_mirror.errors import ConfigError, NotFoundError, PolicyError, PveMirrorError
from pve_mirror.files import fs_error

FORMAT_VERSION = 1
SEGMENT_BYTES = 64 * 1024
DETAIL_CHARS = 160
KEEP_FINISHED = 20
# pmxcfs holds 128 MiB for the whole cluster configuration.
KEEP_FINISHED_BYTES = 4 * 1024 * 1024
ACTIVE = ".jsonl"
# An unfinished run whose last record is older than this is not continued.
MAX_AGE_S = 7 * 24 * 3600
FINISHED = ".done"


@dataclass(frozen=True)
class Entry:
    """One recorded event of a step."""

    step: str
    event: str  # "done", "failed"
    detail: str
    at: float


class Journal:
    """The record of one plan's execution under ``directory``; safe to share between threads."""

    def __init__(self, directory: Path, action: str, fingerprint: str) -> None:
        self.directory = directory
        self.stem = f"{action}-{fingerprint}"
        self.path = directory / f"{self.stem}{ACTIVE}"
        self.finished_path = self.path.with_suffix(FINISHED)
        self._lock = threading.Lock()
        # The segment being appended to and its size; found on the first record.
        self._segment: tuple[int, int] | None = None

    def segment_path(self, index: int, suffix: str = ACTIVE) -> Path:
        """Give the file of segment ``index`` (0 is :attr:`path`)."""
        middle = f".{index}" if index else ""
        return self.directory / f"{self.stem}{middle}{suffix}"

    def segments(self, suffix: str = ACTIVE) -> list[Path]:
        """Give the existing segment files, in order."""
        out: list[Path] = []
        while self.segment_path(len(out), suffix).exists():
            out.append(self.segment_path(len(out), suffix))
        return out

    def entries(self) -> list[Entry]:
        """Give the recorded events, in order.

        A torn line at the end of a segment (the process died while writing it) is
        ignored. Raises ConfigError naming the file and line if a journal is corrupt,
        FileSystemError if it cannot be read.
        """
        out: list[Entry] = []
        for path in self.segments():
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                raise fs_error(exc, path, "read the journal") from exc
            for number, line in enumerate(lines, start=1):
                try:
                    raw = json.loads(line)
                    if raw.get("event") == "begin":
                        continue
                    out.append(Entry(raw["step"], raw["event"], raw.get("detail", ""), raw["at"]))
                except (ValueError, KeyError, TypeError) as exc:
                    if number == len(lines):
                        break
                    raise ConfigError(f"corrupt journal entry: {exc}", str(path), number) from exc
        return out

    def done_steps(self) -> dict[str, str]:
        """Give the ids of steps recorded as done, with their result detail."""
        return {e.step: e.detail for e in self.entries() if e.event == "done"}

    def exists(self) -> bool:
        """Tell whether an unfinished run of this plan left a journal."""
        return self.path.exists()

    def begin(self, title: str) -> None:
        """Open the journal of a run before its first step: a header line (format
        version, title, time), so a run killed before any step finished is seen.

        Does nothing when the journal exists (a rerun continues it). Raises
        FileSystemError naming the file if it cannot be written.
        """
        if self.exists():
            self.check_resumable()
            return
        header = {"event": "begin", "version": FORMAT_VERSION, "title": title[:DETAIL_CHARS]}
        self._append(header)

    def header(self) -> dict[str, object]:
        """Give the ``begin`` line of the journal ({} if it has none or is unreadable)."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as handle:
                raw = json.loads(handle.readline())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) and raw.get("event") == "begin" else {}

    def last_record(self) -> float:
        """Give when the journal was last written (its newest segment's mtime; 0 if gone)."""
        times = []
        for path in self.segments():
            with suppress(FileNotFoundError):
                times.append(path.stat().st_mtime)
        return max(times, default=0.0)

    def check_resumable(self, now: float | None = None) -> None:
        """Raise PolicyError if this unfinished journal must not be continued: written by
        another format version, or last written more than :data:`MAX_AGE_S` ago. The
        message says how to discard it.
        """
        discard = f"'pve-mirror journal discard {self.stem}'"
        version = self.header().get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise PolicyError(
                f"{self.path}: unfinished journal of format {version}, this pve-mirror "
                f"continues format {FORMAT_VERSION} only: check what that run did, then {discard}"
            )
        age = (time.time() if now is None else now) - self.last_record()
        if age > MAX_AGE_S:
            raise PolicyError(
                f"{self.path}: unfinished run last recorded {age / 86400:.0f} days ago, too old "
                f"to continue (limit {MAX_AGE_S // 86400} days): check what it did "
                f"('pve-mirror journal list'), then {discard} and rerun"
            )

    def record(self, step_id: str, event: str, detail: str = "") -> None:
        """Append one event and flush it to disk before returning.

        Raises FileSystemError naming the journal file if it cannot be written.
        """
        entry: dict[str, object] = {"step": step_id, "event": event}
        if detail:
            short = detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 3] + "..."
            entry["detail"] = short
        self._append(entry)

    def _append(self, entry: dict[str, object]) -> None:
        entry["at"] = int(time.time())
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock:
            index, size = self._segment or self._open()
            if size and size + len(line) > SEGMENT_BYTES:
                index, size = index + 1, 0
            path = self.segment_path(index)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise fs_error(exc, path, "record a step in the journal") from exc
            self._segment = (index, size + len(line))

    def _open(self) -> tuple[int, int]:
        """Find the last segment and its size, cutting a torn last line off it."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fs_error(exc, self.directory, "create the directory") from exc
        existing = self.segments()
        if not existing:
            return 0, 0
        last = existing[-1]
        try:
            data = last.read_bytes()
            if data and not data.endswith(b"\n"):
                # A crash mid-line: later lines must not be glued to the fragment.
                keep = data.rfind(b"\n") + 1
                os.truncate(last, keep)
                data = data[:keep]
        except OSError as exc:
            raise fs_error(exc, last, "repair the journal") from exc
        return len(existing) - 1, len(data)

    def finish(self) -> None:
        """Mark the run finished: the segments are kept for the record under new names.

        Older finished journals beyond the newest :data:`KEEP_FINISHED` are removed.
        Raises FileSystemError if the file system refuses.
        """
        with self._lock:
            active = self.segments()
            try:
                for index, path in enumerate(active):
                    os.replace(path, self.segment_path(index, FINISHED))
                # Segments of an earlier finished run of the same plan that had more.
                index = len(active)
                while active and self.segment_path(index, FINISHED).exists():
                    self.segment_path(index, FINISHED).unlink()
                    index += 1
            except OSError as exc:
                raise fs_error(exc, self.path, "finish the journal") from exc
            self._segment = None
        prune_finished(self.directory, KEEP_FINISHED)


_SEGMENT = re.compile(r"(?P<stem>.+?)(?:\.(?P<index>[1-9]\d*))?" + re.escape(FINISHED))


def prune_finished(directory: Path, keep: int, keep_bytes: int | None = None) -> list[Path]:
    """Remove the oldest finished journals in ``directory`` beyond the newest ``keep``
    runs, or beyond ``keep_bytes`` in all (default :data:`KEEP_FINISHED_BYTES`); the
    newest run always stays.

    Gives the files removed. Raises FileSystemError if the file system refuses.
    """
    limit = KEEP_FINISHED_BYTES if keep_bytes is None else keep_bytes
    runs: dict[str, list[tuple[Path, os.stat_result]]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise fs_error(exc, directory, "read") from exc
    for name in names:
        match = _SEGMENT.fullmatch(name)
        if match:
            with suppress(FileNotFoundError):
                info = (directory / name).stat()
                runs.setdefault(match.group("stem"), []).append((directory / name, info))
    newest_first = sorted(
        runs, key=lambda stem: max(i.st_mtime for _, i in runs[stem]), reverse=True
    )
    removed: list[Path] = []
    total = 0
    for rank, stem in enumerate(newest_first):
        total += sum(i.st_size for _, i in runs[stem])
        if rank == 0 or (rank < keep and total <= limit):
            continue
        for path, _info in runs[stem]:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise fs_error(exc, path, "remove an old journal") from exc
            removed.append(path)
    return removed


_ACTIVE_SEGMENT = re.compile(r"(?P<stem>[^.]+)(?:\.(?P<index>[1-9]\d*))?" + re.escape(ACTIVE))


def unfinished(directory: Path) -> list[Journal]:
    """Give the unfinished journals in ``directory``, oldest last record first.

    Raises FileSystemError if the directory cannot be read.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise fs_error(exc, directory, "read") from exc
    found = []
    for name in names:
        match = _ACTIVE_SEGMENT.fullmatch(name)
        if match and match.group("index") is None and "-" in match.group("stem"):
            action, fingerprint = match.group("stem").rsplit("-", 1)
            found.append(Journal(directory, action, fingerprint))
    return sorted(found, key=lambda j: j.last_record())


def describe(journal: Journal, now: float | None = None) -> dict[str, object]:
    """Give one row of ``pve-mirror journal list``: name, title, version, when, steps."""
    header = journal.header()
    last = journal.last_record()
    age = (time.time() if now is None else now) - last
    try:
        steps: int | None = len(journal.done_steps())
    except ConfigError:
        steps = None  # corrupt: the row still shows, the run would refuse
    started = header.get("at")
    return {
        "name": journal.stem,
        "title": header.get("title"),
        "version": header.get("version"),
        "started": _iso(float(started)) if isinstance(started, int | float) else None,
        "last_record": _iso(last),
        "steps_done": steps,
        "resumable": age <= MAX_AGE_S and header.get("version", FORMAT_VERSION) == FORMAT_VERSION,
        "path": str(journal.path),
    }


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def discard(directory: Path, name: str) -> list[Path]:
    """Remove the unfinished journal ``name`` (``<action>-<fingerprint>``); give its files.

    Raises NotFoundError if there is no such unfinished journal, FileSystemError if the
    file system refuses.
    """
    journal = next((j for j in unfinished(directory) if j.stem == name), None)
    if journal is None:
        raise NotFoundError(f"no unfinished journal {name!r} in {directory}")
    removed = journal.segments()
    for path in reversed(removed):
        try:
            path.unlink()
        except OSError as exc:
            raise fs_error(exc, path, "discard the journal") from exc
    return removed


def unfinished_warnings(root: Path) -> list[str]:
    """Give one line per unfinished run under ``<root>/pve-mirror/journal`` (for status).

    Never raises: a journal directory that cannot be read is one line too.
    """
    directory = root / "pve-mirror" / "journal"
    try:
        rows = [describe(j) for j in unfinished(directory)]
    except PveMirrorError as exc:
        return [f"cannot list the unfinished runs: {exc}"]
    lines = []
    for row in rows:
        then = "rerun it to continue" if row["resumable"] else "too old or foreign to continue"
        lines.append(
            f"unfinished run {row['name']}: {row['title'] or '?'} (last record "
            f"{row['last_record']}, {row['steps_done']} step(s) done): {then}, "
            "or 'pve-mirror journal discard' it"
        )
    return lines
