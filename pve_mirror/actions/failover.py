"""``pve-mirror failover``: move guests from the peer (source) to this site (target).

Run on the target. *Planned* (both sites up): stop the guests on the source through
its API, take a final mirror snapshot and wait until it is here, demote on the
source, wait until the demotion is here, promote here, install the staged configs,
start the guests in boot order. *Forced* (``--force``, the source is gone): check
that the source really does not answer, promote with force, record that the source
must be fenced, install, start.

The plan does not depend on the state it finds (every step is idempotent: a promote
of a primary image is a success), so a rerun of the same command after a crash has
the same fingerprint, finds the journal and continues after the last finished step.
"""

from __future__ import annotations

from collections.abc import Callable

from pve_mirror.actions import failover_preflight, preflight
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover_select import (
    DEFAULT_DEADLINE,
    FORCED,
    PLANNED,
    UNORDERED,
    FailoverOptions,
    GuestMove,
    home_node,
    select_guests,
    target_node,
)
from pve_mirror.actions.failover_steps import FailoverSteps, pause_until
from pve_mirror.actions.guest_extras_steps import add_steps as add_extra_steps
from pve_mirror.actions.staging import load_staged
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, step

__all__ = [
    "DEFAULT_DEADLINE",
    "FORCED",
    "PLANNED",
    "UNORDERED",
    "FailoverOptions",
    "FailoverSteps",
    "GuestMove",
    "home_node",
    "pause_until",
    "plan_failover",
    "run_failover",
    "select_guests",
    "target_node",
]

# Phases: per-guest steps of one phase run concurrently; phases run in order.
P_STOP, P_SNAPSHOT, P_COPIED, P_DEMOTE, P_DEMOTED, P_ASIDE = 10, 20, 30, 40, 50, 52
P_DAEMON, P_PROMOTE, P_FENCE, P_SCHEDULE, P_INSTALL, P_RECORD, P_START = (
    55, 60, 61, 65, 70, 75, 80,
)  # fmt: skip


def plan_failover(ctx: SiteContext, options: FailoverOptions) -> tuple[Plan, list[GuestMove]]:
    """Give the failover plan and the guests it moves (reads only; changes nothing).

    Raises PolicyError when a forced failover finds the source still answering (unless
    ``yes_i_know``) or a planned one cannot reach it, and for unusable staged configs.
    """
    source = ctx.site.peer().name
    target = ctx.site.local_name
    node = target_node(ctx, options)
    moves = select_guests(ctx, options, node)
    forced = options.mode == FORCED
    preflight.check_source(ctx, forced, options.yes_i_know)
    lock_notes = preflight.check_staged_locks([m.staged for m in moves], source)
    guests = [(m.staged.kind, m.staged.vmid) for m in moves]
    if not forced:
        preflight.check_planned_source(ctx, guests)
    preflight.check_local_api(ctx, guests)
    staged_set = load_staged(ctx.root.path, source)
    for staged in staged_set.guests:
        preflight.clear_stale_lock(staged)  # as the install will
    checked = failover_preflight.check_moves(
        ctx, moves, staged_set, forced=forced, returning=options.returning
    )
    names = " ".join(m.label for m in moves)
    on = ", ".join(sorted({m.node for m in moves}))
    plan = Plan("failover", f"{'forced' if forced else 'planned'} failover of {names} "
                f"from {source} to {target} ({on})")  # fmt: skip
    plan.notes += lock_notes + checked
    if forced:
        plan.notes.append(
            f"{source} is not reachable: its images are promoted with force; {source} must be "
            "fenced (kept from running the guests) until 'pve-mirror failback' there"
        )
        if not options.stop_mirror_daemon:
            plan.notes.append(
                "Ceph users recommend stopping this site's rbd-mirror daemon while the other "
                "site is down (--stop-mirror-daemon)"
            )
    orders = sorted({m.order for m in moves})
    for move in moves:
        g = move.label
        kind, vmid = move.staged.kind, str(move.staged.vmid)
        if not forced:
            plan.add(step("stop-source", P_STOP, g, g, f"shut down {g} on {source}",
                          guest_type=kind, vmid=vmid))  # fmt: skip
        for storeid, spec in move.images:
            img = str(spec)
            if not forced:
                plan.add(
                    step(
                        "final-snapshot",
                        P_SNAPSHOT,
                        img,
                        g,
                        f"take a final mirror snapshot of {img} on {source}",
                        image=img,
                    )
                )
                plan.add(
                    step(
                        "wait-copied",
                        P_COPIED,
                        img,
                        g,
                        f"wait until {target} holds that snapshot of {img}",
                        mutates=False,
                        storage=storeid,
                        image=img,
                    )
                )
                plan.add(
                    step("demote-source", P_DEMOTE, img, g, f"demote {img} on {source}", image=img)
                )
                plan.add(
                    step(
                        "wait-demoted",
                        P_DEMOTED,
                        img,
                        g,
                        f"wait until the demotion of {img} has reached {target}",
                        mutates=False,
                        storage=storeid,
                        image=img,
                    )
                )
            plan.add(
                step(
                    "promote",
                    P_PROMOTE,
                    img,
                    g,
                    f"promote {img} on {target}{' (forced)' if forced else ''}",
                    storage=storeid,
                    image=img,
                    force=forced,
                )
            )
            plan.add(
                step(
                    "schedule",
                    P_SCHEDULE,
                    img,
                    g,
                    f"schedule mirror snapshots of {img} on {target}"
                    + (f" every {move.schedule}" if move.schedule else ""),
                    storage=storeid,
                    image=img,
                    schedule=move.schedule,
                )
            )
        plan.add(
            step(
                "set-aside",
                P_ASIDE,
                g,
                g,
                f"move an old config of {g} on {target} out of nodes/ "
                "(only if its disks are not primary here)",
                guest_type=kind,
                vmid=vmid,
            )
        )
        plan.add(
            step(
                "install-config",
                P_INSTALL,
                g,
                g,
                f"install {move.staged.name} on node {move.node} ({move.node_why})",
                vmid=vmid,
                node=move.node,
            )
        )
        kept = ", ".join(
            [f"{move.mode} mode" if move.mode else "mode of its images"]
            + [f"schedule {move.schedule}"] * bool(move.schedule)
        )
        plan.add(step("record", P_RECORD, g, g, f"record {g} in pve-mirror.cfg ({kept})",
                      mode=move.mode, schedule=move.schedule))  # fmt: skip
        plan.add(step("start", P_START + orders.index(move.order), g, g,
                      f"start {g} on {move.node}" + ("" if move.order == UNORDERED
                                                     else f" (boot order {move.order})"),
                      guest_type=kind, vmid=vmid, node=move.node))  # fmt: skip
        add_extra_steps(plan, move, staged_set, source, forced)  # firewall rules, HA
    if forced:
        plan.add(
            step(
                "fence-note",
                P_FENCE,
                source,
                "site",
                f"record that {source} must be fenced",
                source=source,
            )
        )
        if options.stop_mirror_daemon:
            plan.add(
                step(
                    "stop-mirror-daemon",
                    P_DAEMON,
                    target,
                    "site",
                    f"stop the rbd-mirror daemon of {target} while {source} is down",
                )
            )
    return plan, moves


def run_failover(
    ctx: SiteContext,
    plan: Plan,
    moves: list[GuestMove],
    options: FailoverOptions,
    progress: Callable[[str], None] | None,
) -> list[StepOutcome]:
    """Execute the plan under the cluster lock, journalled; give one outcome per step.

    Raises LockedError naming the holder if another failover runs.
    """
    return run_journalled(
        ctx.root.path,
        plan,
        FailoverSteps(ctx, moves, options).table(),
        concurrency=ctx.site.concurrency,
        progress=progress,
    )
