"""Tabulate the benchmarks' JSON lines (bench/results.jsonl) as Markdown, for
docs/performance.md.

    python -m bench.report [FILE] [--last N]

One table per benchmark, one row per case of each run, newest run last, with the
machine (cores, load, Ceph release) the figures were measured on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}x"


def _where(run: dict[str, Any]) -> str:
    m = run.get("machine", {})
    load = f"{m.get('load1_before', '?')}/{m.get('load1_after', '?')}"
    return f"{m.get('cores', '?')} cores, load {load}, Ceph {m.get('ceph', '?')}"


def timing_table(runs: list[dict[str, Any]]) -> list[str]:
    """Give the rows of mirror_bench/failover_bench runs."""
    lines = [
        "| run | case | items | pve-mirror s | CPU s | manual s | ratio | goal | machine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        when = f"{run['at'][:16]} {run.get('commit', '')}"
        for name, c in run["cases"].items():
            goal = f"{c['goal']:g}x" if c.get("goal") is not None else "-"
            lines.append(
                f"| {when} | {name} | {c.get('items', '-')} | {_seconds(c.get('pve_mirror_s'))} "
                f"| {_seconds(c.get('pve_mirror_cpu_s'))} | {_seconds(c.get('manual_s'))} "
                f"| {_ratio(c.get('ratio'))} | {goal} | {_where(run)} |"
            )
    return lines


def latency_table(runs: list[dict[str, Any]]) -> list[str]:
    """Give the rows of hook_latency runs."""
    lines = [
        "| run | variant | runs | median ms | p90 ms | x no-op | machine |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        when = f"{run['at'][:16]} {run.get('commit', '')}"
        for name, c in run["cases"].items():
            lines.append(
                f"| {when} | {name} | {c['runs']} | {c['median_ms']:.1f} | {c['p90_ms']:.1f} "
                f"| {c['ratio']:.1f} | {_where(run)} |"
            )
    return lines


def render(path: Path, last: int) -> str:
    """Give the Markdown of the newest ``last`` runs of each benchmark in ``path``."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: list[str] = []
    for bench in ("mirror_bench", "hook_latency", "failover_bench"):
        mine = [r for r in runs if r.get("bench") == bench][-last:]
        if not mine:
            continue
        out += [f"### {bench}", ""]
        out += latency_table(mine) if bench == "hook_latency" else timing_table(mine)
        out.append("")
    return "\n".join(out)


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--last", type=int, default=3, help="runs per benchmark (newest)")
    args = parser.parse_args()
    print(render(args.file, args.last))


if __name__ == "__main__":
    main()
