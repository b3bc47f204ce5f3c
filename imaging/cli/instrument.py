"""Tasks about one instrument (and the fleet at a glance): status, validate, reimage, resume, rollback, and
repair-journal (the way out of a damaged journal)."""

from __future__ import annotations

import json as jsonlib

from invoke import task
from rich.table import Table

from imaging.cli.ui import (
    StepPrinter,
    console,
    context,
    err_console,
    names,
    print_outcome,
    print_plan,
    reports_errors,
)
from imaging.ops import reimage as reimaging
from imaging.ops import repair as repairs
from imaging.ops import rollback as rollbacks
from imaging.ops import status as statuses


@task(help={"json": "print machine-readable JSON instead of a table",
            "instruments": "comma-separated instrument names (default: all)"})
@reports_errors
def status(c, json=False, instruments=""):  # noqa: ANN001
    """Show every instrument: host, VM, power, release running vs desired, last operation, pending work."""
    with context() as ctx:
        rows = statuses.fleet_status(ctx, names(instruments) or None)
        problems = statuses.journal_problems(ctx)
        trust = statuses.trust_lines(ctx, names(instruments) or None)
    if json:
        print(jsonlib.dumps([r.to_dict() for r in rows], indent=2))
        for line in problems:
            err_console.print(line, soft_wrap=True)
        return
    table = Table(title="Fleet status")
    sides = any(r.side for r in rows)  # adopted instruments: which of their two VMs runs
    hot = any(r.hotfixes for r in rows)
    for col in ("instrument", "host", "VM", "power", "running", "desired", "prepared",
                *(("side",) if sides else ()), *(("hotfixes",) if hot else ()), "last operation", "pending"):
        table.add_column(col)
    for r in rows:
        last = f"{r.last_operation} {r.last_result}" if r.last_operation else ""
        if r.seen_from == "instrument":
            last += " (its own record)"  # this machine's journal has no history of it
        hotfixes = (", ".join(r.hotfixes) or "-",) if hot else ()
        running = f"{r.running or '-'} (legacy side)" if r.side == "legacy" and not sides else r.running or "-"
        side = (f"legacy ({r.vm}-legacy)" if r.side == "legacy" else "current" if r.side else "-",) if sides else ()
        table.add_row(r.instrument, r.host, r.vm, r.power, running, r.desired or "?", r.prepared or "-",
                      *side, *hotfixes, last, r.pending)
    console.print(table)
    for r in rows:
        if r.hint:
            console.print(f"{r.instrument}: {r.pending}: finish it with {r.hint}", soft_wrap=True)
    for line in trust:
        console.print(line, soft_wrap=True)
    for line in problems:
        err_console.print(f"[red]{line}[/]", soft_wrap=True)


@task(help={"dry_run": "say what would be rebuilt and marked, and change nothing"})
@reports_errors
def repair_journal(c, dry_run=False):  # noqa: ANN001
    """Rebuild a damaged journal: keep the damaged file, keep every intact row, rebuild damaged rows from the
    instruments' own records, and mark the rest as damaged (they no longer count as finished changes)."""
    with context() as ctx:
        out = repairs.repair_journal(ctx, dry_run=dry_run)
    if out.kept_as is None:
        console.print(f"[green]journal ok[/]: {out.operations} operations, every row's checksum matches; "
                      "nothing to repair")
        return
    for line in out.rebuilt:
        console.print(f"rebuilt from the instrument's record: {line}", soft_wrap=True)
    for line in out.marked:
        console.print(f"[yellow]marked damaged[/] (no record vouches for it): {line}", soft_wrap=True)
    if out.steps_marked:
        console.print(f"{out.steps_marked} step row(s) marked damaged")
    if out.unreadable:
        console.print(f"[yellow]{out.unreadable} row(s) SQLite could not read at all[/]")
    verb = "would keep" if dry_run else "kept"
    console.print(f"{'dry run: ' if dry_run else ''}{verb} the damaged journal as {out.kept_as}", soft_wrap=True)


@task
@reports_errors
def validate(c):  # noqa: ANN001
    """Check the whole inventory, releases and labels; exit non-zero on any problem. Changes nothing."""
    with context() as ctx:
        v = statuses.validate(ctx)
    console.print(f"[green]inventory ok[/]: {v.instruments} instruments on {v.hosts} hosts in {v.groups} groups; "
                  f"{v.releases} releases")


@task(help={"instrument": "the instrument to reimage (name like ZOOM or VM name like NDXZOOM)",
            "release": "release id or label to go to (default: the instrument's desired release)",
            "dry_run": "print the plan and change nothing",
            "allow_dirty": "render settings from a git tree with uncommitted changes (marked dirty)",
            "capture_drift": "save settings changed on the instrument (to its settings branch, or to "
                             "Var\\settings-drift\\<time>\\) before replacing them, instead of stopping",
            "settings_ref": "git ref (branch, tag, commit) to read the settings templates at (default: the release's)",
            "drop_hotfix": "hotfix id(s), comma-separated, the instrument may lose (the release lacks them)",
            "force": "reimage even to the release the instrument already runs (e.g. to repair its OS disk)",
            "verify_content": "the check after the reimage hashes every Apps file against the image's manifest "
                              "(default: counts, sizes and the version file)"})
@reports_errors
def reimage(c, instrument, release=None, dry_run=False, allow_dirty=False, capture_drift=False,  # noqa: ANN001
            settings_ref=None, drop_hotfix="", force=False, verify_content=False):
    """Reimage one instrument: new OS and Apps disks from the release, fresh Settings, Var and Data kept."""
    drops = tuple(names(drop_hotfix))
    with context() as ctx:
        if dry_run:
            print_plan(reimaging.preview_reimage(ctx, instrument, release, drop_hotfixes=drops,
                                                 allow_dirty=allow_dirty, capture_drift=capture_drift,
                                                 settings_ref=settings_ref))
            return
        outcome = reimaging.reimage(ctx, instrument, release, listener=StepPrinter(), allow_dirty=allow_dirty,
                                    capture_drift=capture_drift, settings_ref=settings_ref, drop_hotfixes=drops,
                                    force=force, verify_content=verify_content)
        print_outcome(outcome, outcome.instrument, ctx.journal)
        if outcome.error:
            err_console.print(f"[yellow]warning:[/] {outcome.error}", soft_wrap=True)


@task(help={"instrument": "the instrument whose interrupted operation should be finished"})
@reports_errors
def resume(c, instrument):  # noqa: ANN001
    """Finish an operation that was interrupted (the process was killed): continue from its last step."""
    with context() as ctx:
        outcome = reimaging.resume(ctx, instrument, listener=StepPrinter())
        print_outcome(outcome, outcome.instrument)


@task(help={"instrument": "the instrument to roll back",
            "dry_run": "print what would be undone and change nothing"})
@reports_errors
def rollback(c, instrument, dry_run=False):  # noqa: ANN001
    """Return an instrument to its state before its last operation: undo an interrupted one step by step, or
    else re-attach the previous OS, Apps and Settings disks (or revert the last hotfix)."""
    with context() as ctx:
        choice = rollbacks.choose_rollback(ctx, instrument)
        if dry_run:
            if choice.plan is not None:
                print_plan(choice.plan)
            else:
                op = choice.interrupted
                console.print(f"would undo the changed steps of {op.kind} {op.id} in reverse")
            return
        outcome = rollbacks.rollback(ctx, choice, listener=StepPrinter())
        if choice.interrupted is not None:
            console.print(f"[bold green]{choice.instrument}: rolled back[/] ({choice.interrupted.id})")
        else:
            print_outcome(outcome, choice.instrument)
