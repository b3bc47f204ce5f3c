"""Tasks over many instruments: stage images, deploy a release in waves, hotfix and revert, list hotfixes."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Any

from invoke import task
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from imaging.cli.ui import (
    FleetDisplay,
    confirm,
    console,
    context,
    names,
    print_abort_rule,
    print_fleet_plan,
    print_prediction,
    print_recap,
    reports_errors,
    run_live,
)
from imaging.core.errors import ImagingError
from imaging.ops import acceptance as accepting
from imaging.ops import deploy as deploys
from imaging.ops import doctor as doctoring
from imaging.ops import facts, pages
from imaging.ops import hotfix as hotfixing
from imaging.ops import publish as publishing
from imaging.ops import stage as staging
from imaging.ops.deploy import DEFAULT_MAX_FAIL_PERCENT, Options, TimeModel


def _transfer_display(bar: Progress) -> Any:
    """A progress callback for publish and stage: bytes and rate onto the share, then the host's pull."""
    tasks: dict[tuple[str, str], Any] = {}

    def show(ev: Any) -> None:
        key = (ev.host, ev.artifact)
        if key not in tasks:
            tasks[key] = bar.add_task(f"{ev.host} {ev.artifact}", total=None)
        if ev.phase == "publish":
            bar.update(tasks[key], completed=ev.done, total=ev.total or None,
                       description=f"{ev.artifact}: to the share of {ev.host}")
        elif ev.result is None:
            bar.update(tasks[key], description=f"{ev.host} {ev.artifact}: host pulls and verifies")
        else:
            done = "copied" if ev.result.get("changed") else "already staged"
            bar.update(tasks[key], description=f"{ev.host} {ev.artifact}: {done}")

    return show


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), console=console, transient=not sys.stdout.isatty())


@task(help={"release": "the release whose images to publish (id or label)",
            "group": "only the shares of this group's hosts",
            "instruments": "only the shares of these instruments' hosts (comma-separated)"})
@reports_errors
def publish(c, release, group=None, instruments=""):  # noqa: ANN001
    """Put a release's images from the store onto the image share hosts pull from: verified, resumable."""
    with context() as ctx, _bar() as bar:
        done = publishing.publish_release(ctx, release, group=group, instruments=names(instruments),
                                          progress=_transfer_display(bar))
    table = Table(title=f"Published {release}")
    for col in ("release", "artifact", "share", "result", "bytes copied"):
        table.add_column(col)
    for p in done:
        table.add_row(p.release, p.artifact, p.share, "copied, verified" if p.copied else "already there",
                      str(p.bytes))
    console.print(table)
    console.print(f"{sum(1 for p in done if p.copied)} image(s) copied, {sum(p.bytes for p in done)} bytes; "
                  f"next: `invoke stage --release={release}`")


@task(help={"release": "the release whose images to stage (id or label)",
            "group": "only the hosts of this group's instruments",
            "instruments": "only the hosts of these instruments (comma-separated)"})
@reports_errors
def stage(c, release, group=None, instruments=""):  # noqa: ANN001
    """Copy a release's images to each host that needs them, once per host, verified, resumable."""
    with context() as ctx:
        chosen = ctx.inventory.select(names=names(instruments) or None, group=group)
        with _bar() as bar:
            staged = staging.stage_for(ctx, release, chosen, progress=_transfer_display(bar))
    table = Table(title=f"Staged {release}")
    for col in ("host", "release", "artifact", "result", "bytes copied"):
        table.add_column(col)
    for s in staged:
        table.add_row(s.host, s.release, s.result["name"],
                      "copied, verified" if s.result.get("changed") else "already staged",
                      str(s.result.get("bytes", 0)))
    console.print(table)
    copied = sum(s.result.get("bytes", 0) for s in staged)
    hosts = len({(s.host, s.release) for s in staged})
    console.print(f"{hosts} host(s), {sum(1 for s in staged if s.result.get('changed'))} image(s) copied, "
                  f"{copied} bytes")


@task(help={"release": "the release (id or label) to deploy",
            "group": "deploy this group's instruments",
            "instruments": "comma-separated names, or @failed for the failures of the last deploy",
            "all": "deploy every instrument",
            "canary": "the instrument deployed alone first (default: the first of the selection; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed (default 10: a "
                                "failed canary stops the run; 100 keeps going on purpose)",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "print the fleet plan and stop",
            "resume": "continue the interrupted deploy (its record and the journal say where)",
            "simulate": "predict the deploy on a virtual clock with the time model; change nothing",
            "model": "a YAML file overriding the time model's defaults (see docs/deploy.md)",
            "force": "reimage instruments that already run the release",
            "pulls": "hosts pulling images from the share at once, for hosts not staged beforehand",
            "allow_dirty": "deploy settings rendered from uncommitted templates or inventory files (recorded in the "
                           "deploy's record and in each instrument's settings provenance)",
            "drop_hotfix": "comma-separated hotfix ids the deploy may drop (the release neither includes them nor "
                           "is declared for them); without it such a deploy is refused before any change"})
@reports_errors
def deploy(c, release="", group=None, instruments="", all=False, canary=None, batches="100%",  # noqa: A002, ANN001
           parallel=4, max_fail_percent=DEFAULT_MAX_FAIL_PERCENT, yes=False, dry_run=False, resume=False,
           simulate=False, model=None, force=False, pulls=4, drop_hotfix="", allow_dirty=False):
    """Reimage many instruments in waves: plan, confirm, canary, batches, limits, recap and report."""
    tm = TimeModel.load(Path(model) if model else None)
    with context() as ctx:
        if resume:
            rec = deploys.resumable(ctx)
            if rec is None:
                raise ImagingError("no interrupted deploy to resume")
            display = FleetDisplay(len(rec["selection"]))
            console.print(f"resuming {rec['id']} ({rec['release']}, {len(rec['selection'])} instruments)")
            print_recap(run_live(display, lambda: deploys.resume(ctx, deploy_id=rec["id"], model=tm,
                                                                 progress=display)))
            return
        if not release:
            raise ImagingError("--release is required (a release id like 2026C3.0 or a label)")
        options = Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                          canary="" if canary == "none" else canary, batches=batches, force=force,
                          pulls=int(pulls), drop_hotfixes=tuple(names(drop_hotfix)), allow_dirty=bool(allow_dirty))
        insts = facts.select(ctx, group=group, instruments=instruments, everything=all)
        if simulate:
            prediction = deploys.simulate(ctx, insts, release, options, tm)
            console.print(f"simulating {len(insts)} instruments, waves "
                          f"{' | '.join(str(len(w)) for w in prediction.summary.waves)}, --parallel={parallel}")
            print_prediction(prediction)
            page = pages.simulation_page(ctx, "deploy", f"release {release} (simulated)", insts, prediction,
                                         canary=options.canary != "")
            console.print(f"drawn in {page}")
            return
        plan = deploys.plan_deploy(ctx, insts, release, options, tm)
        print_fleet_plan(plan.rows, plan.prediction)
        print_abort_rule([n for w in plan.prediction.summary.waves for n in w], options)
        plan.check()
        if options.drop_hotfixes:
            console.print(f"hotfixes dropped on purpose (--drop-hotfix): {', '.join(options.drop_hotfixes)}")
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        confirm(f"deploy {release} to {len(insts)} instruments?", yes)
        display = FleetDisplay(len(insts))
        print_recap(run_live(display, lambda: deploys.run_deploy(ctx, plan, progress=display)))


@task(help={"patch": "the hotfix package: a folder with hotfix.yaml, or a .tar/.tar.gz of one",
            "revert": "instead of applying, revert this hotfix id",
            "instruments": "comma-separated instrument names, or @failed for the failures of the last hotfix "
                           "(or, with --revert, of the last revert)",
            "group": "every instrument of this group",
            "canary": "the instrument hotfixed alone first (default: the first of the selection; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed (default 10: a "
                                "failed canary stops the run; 100 keeps going on purpose)",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "check the package and that each instrument runs a release it applies to; change nothing"})
@reports_errors
def hotfix(c, patch=None, revert=None, instruments="", group=None, canary=None, batches="100%",  # noqa: ANN001
           parallel=4, max_fail_percent=DEFAULT_MAX_FAIL_PERCENT, yes=False, dry_run=False):
    """Apply a hotfix to running instruments without a reimage (or revert one), in waves like a deploy,
    recorded on each and in the journal; a failure on one instrument restores that instrument's files."""
    if bool(patch) == bool(revert):
        raise ImagingError("give exactly one of --patch=PATH or --revert=ID")
    options = Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                      canary="" if canary == "none" else canary, batches=batches)
    with context() as ctx:
        insts = facts.select(ctx, group=group, instruments=instruments, kind="revert" if revert else "hotfix")
        run = hotfixing.prepare_hotfix(ctx, insts, patch=Path(patch) if patch else None, revert=revert,
                                       options=options)
        if run.package is not None:
            hf = run.package.hotfix
            console.print(f"[bold]{hf.id}[/]: {hf.description}")
            console.print(f"applies to {', '.join(hf.applies_to)}; {len(hf.files)} file(s); "
                          f"restarts {', '.join(hf.restart) or 'nothing'}")
        console.print(f"{run.what} on {len(insts)} instruments; waves: "
                      f"{' | '.join(', '.join(j.name for j in w) for w in run.waves)}", soft_wrap=True)
        print_abort_rule([j.name for w in run.waves for j in w], options)
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        confirm(f"{run.what} on {len(insts)} instruments?", yes)
        display = FleetDisplay(len(insts), what=run.kind)
        print_recap(run_live(display, lambda: hotfixing.run_hotfix(ctx, run, progress=display)))


@task(help={"json": "print machine-readable JSON instead of a table"})
@reports_errors
def hotfixes(c, json=False):  # noqa: ANN001
    """List which instruments carry which hotfixes (from the journal; the ledger on each Var disk agrees)."""
    with context() as ctx:
        carried = hotfixing.list_hotfixes(ctx)
    if json:
        print(jsonlib.dumps(carried, indent=2))
        return
    table = Table(title="Hotfixes carried")
    for col in ("instrument", "hotfix", "applies to", "description"):
        table.add_column(col)
    for inst, entries in sorted(carried.items()):
        for hid, man in sorted(entries.items()):
            table.add_row(inst, hid, ", ".join(man["applies_to"]), man["description"])
    console.print(table)


@task(help={"hosts": "comma-separated host names (default: every host of the inventory)",
            "json": "print machine-readable JSON instead of a table"})
@reports_errors
def doctor(c, hosts="", json=False):  # noqa: ANN001
    """Check each host before anything runs there, changing nothing: the endpoint and its certificate, the
    credentials, the Hyper-V module, the storage root and its free space, the image share seen from the host,
    WinRM quotas, the instrument VMs, and PowerShell Direct on one running instrument. Exits non-zero on any
    failure, with the fix for each."""
    with context() as ctx:
        checks = doctoring.doctor(ctx, names(hosts) or None)
    if json:
        print(jsonlib.dumps([ch.to_dict() for ch in checks], indent=2))
    else:
        table = Table(title="Host checks")
        for col in ("host", "check", "result", "what was seen"):
            table.add_column(col)
        for ch in checks:
            table.add_row(ch.host, ch.name, "[green]ok[/]" if ch.ok else "[bold red]FAILED[/]", ch.detail)
        console.print(table)
        for ch in checks:
            if not ch.ok:
                console.print(f"{ch.host} {ch.name}: fix: {ch.fix}", soft_wrap=True)
    failed = [ch for ch in checks if not ch.ok]
    if failed:
        raise ImagingError(f"{len(failed)} check(s) failed on {', '.join(sorted({ch.host for ch in failed}))}; "
                           "each fix is printed above")
    if not json:
        console.print(f"[green]every check passed[/] on {len({ch.host for ch in checks})} host(s)")


@task(help={"host": "the spare host to accept",
            "instrument": "a throwaway instrument of that host, marked `scratch: true` in its file",
            "release": "the release to reimage it to (default: its desired release)",
            "next_release": "a second release to prepare and switch to (optional)"})
@reports_errors
def acceptance(c, host, instrument, release=None, next_release=None):  # noqa: ANN001
    """The first contact with a host as one command: doctor, then every action once on a scratch instrument
    (stage, reimage, drift read, hotfix and revert, prepare and switch or a second reimage, rollback), then
    cleanup; writes a Markdown report of each phase and each script's duration and result."""
    with context() as ctx:
        out = accepting.run_acceptance(ctx, host, instrument, release=release, next_release=next_release,
                                       say=lambda line: console.print(line, soft_wrap=True))
    console.print(f"report: {out.report}")
    if not out.ok:
        raise ImagingError(f"acceptance of {host} FAILED; send {out.report} with the question")
    console.print(f"[green]acceptance of {host} passed[/]")
