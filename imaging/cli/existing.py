"""Tasks about the machines facilities have today: survey a VM imaging did not make (read only), and, on the
lab, make hand-made VMs to rehearse with."""

from __future__ import annotations

import json as jsonlib

from invoke import task
from rich.table import Table

from imaging.cli.ui import StepPrinter, confirm, console, context, names, print_outcome, print_plan, reports_errors
from imaging.core.errors import InputError
from imaging.ops import adopt as adopting
from imaging.ops import sides
from imaging.ops import survey as surveying


def _mb(n: int) -> str:
    """A size people read at a glance: bytes, kB or MB."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"


@task(help={"instrument": "the instrument whose VM to survey (name like LET or VM name like NDXLET)",
            "json": "print the survey as JSON (it is also written to .state/reports/)"})
@reports_errors
def survey(c, instrument, json=False):  # noqa: ANN001
    """What an instrument's existing VM is and holds, read only: disks, data, the old system's folders, users'
    files, and whether imaging made it. Changes nothing."""
    with context() as ctx:
        out = surveying.survey(ctx, ctx.inventory.instrument(instrument))
    if json:
        print(jsonlib.dumps(out.to_dict(), indent=2))
        return
    console.print(f"[bold]{out.vm}[/] on {out.host}: " + (f"generation {out.generation}, {out.power}" if out.exists
                                                          else "no such VM"))
    if out.disks:
        table = Table(title="Disks")
        for col in ("slot", "path", "size", "parent", "label"):
            table.add_column(col)
        for d in out.disks:
            table.add_row(str(d["slot"]), d["path"], _mb(d["bytes"]), d.get("parent") or "-", d.get("label") or "-")
        console.print(table)
    if out.folders:
        table = Table(title="Where its data lives")
        for col in ("folder", "kind", "files", "size"):
            table.add_column(col)
        for path, f in out.folders.items():
            if f["exists"]:
                table.add_row(path, f["kind"], str(f["files"]), _mb(f["bytes"]))
        console.print(table)
    for title, rows in (("User files in profile folders", out.user_files),
                        ("Everything else outside the known folders", out.other)):
        if rows:
            table = Table(title=title)
            table.add_column("path")
            table.add_column("size")
            for r in rows:
                table.add_row(r["path"], _mb(r["bytes"]))
            console.print(table)
    console.print(out.verdict)
    console.print(f"report: {out.report}")


@task(help={"instruments": "comma-separated instruments (default: every one marked legacy_control_system)"})
@reports_errors
def lab_handmade(c, instruments=""):  # noqa: ANN001
    """The lab only: give instruments a hand-made VM (one OS disk with data, the old system's var folder and a
    user's desktop files), as facilities have them today, to rehearse survey and adoption."""
    with context() as ctx:
        chosen = [ctx.inventory.instrument(n) for n in names(instruments)] or \
            [i for i in ctx.inventory.instruments.values() if i.legacy_control_system]
        if not chosen:
            raise InputError("no instrument chosen", field="--instruments", fix="name instruments")
        for inst in chosen:
            console.print(f"{inst.vm} on {inst.host}: hand-made VM with its disk at "
                          f"{surveying.make_handmade(ctx, inst)}")


@task(help={"instrument": "the instrument whose hand-made VM to adopt",
            "release": "the release the new VM runs (default: the instrument's desired release)",
            "dry_run": "survey, check and print the plan; change nothing",
            "yes": "do not ask for confirmation"})
@reports_errors
def adopt(c, instrument, release=None, dry_run=False, yes=False):  # noqa: ANN001
    """Turn a hand-made VM into an imaging instrument without losing anything: the old VM is stopped, renamed
    <VM>-legacy and kept whole; its data is copied off its disk into new Var and Data disks; the new VM is made
    under the old name. A failure undoes it all."""
    with context() as ctx:
        if dry_run:
            print_plan(adopting.plan_adoption(ctx, instrument, release))
            return
        confirm(f"adopt {instrument}: stop its VM, keep it as {ctx.inventory.instrument(instrument).vm}"
                f"{adopting.LEGACY_SUFFIX}, and make the new one?", yes)
        printer = StepPrinter()
        out = adopting.adopt(ctx, instrument, release, listener=printer)
        print_outcome(out, instrument, ctx.journal)


@task(help={"instruments": "comma-separated instruments whose legacy side to delete",
            "dry_run": "print what would be deleted; change nothing",
            "yes": "do not ask for confirmation"})
@reports_errors
def retire_legacy(c, instruments, dry_run=False, yes=False):  # noqa: ANN001
    """Delete an adopted instrument's old VM and its own disks, for good: only when it runs its current side
    and has for adopt.retire_min_days without a switch back. The shared Data and Var disks are never touched."""
    with context() as ctx:
        for name in names(instruments):
            plan = sides.plan_for_retirement(ctx, ctx.inventory.instrument(name))
            print_plan(plan, dry_run=dry_run)
            if dry_run:
                continue
            rp = plan.rollback_point
            confirm(f"delete {rp['retired']} and its disk(s) {', '.join(rp['disks'])} for good?", yes)
            print_outcome(sides.retire_legacy(ctx, name, listener=StepPrinter()), name, ctx.journal)


@task(help={"instrument": "the adopted instrument to give back to its hand-made VM",
            "dry_run": "print the plan; change nothing",
            "yes": "do not ask for confirmation"})
@reports_errors
def unadopt(c, instrument, dry_run=False, yes=False):  # noqa: ANN001
    """Undo an adoption: the old VM takes its name again and runs, with every run either side wrote copied
    back into its own folders (verified; a file it replaces is kept). The new VM is removed; its disks and the
    Var, Data and Shared disks stay on the host. A failure returns to the side that ran."""
    with context() as ctx:
        plan = adopting.plan_for_unadoption(ctx, instrument)
        print_plan(plan, dry_run=dry_run)
        if dry_run:
            return
        confirm(f"give {plan.instrument} back to {plan.rollback_point['unadopted']} (renamed {plan.vm}, started) "
                f"and remove the new VM {plan.vm}? Its disks stay on {plan.host}.", yes)
        print_outcome(adopting.unadopt(ctx, instrument, listener=StepPrinter()), plan.instrument, ctx.journal)
