"""The user's front door: invoke tasks. They parse arguments, call imaging, and print. Nothing else.

Run `invoke --list` for the tasks and `invoke --help <task>` for each task's options.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from invoke import Exit, task
from rich.console import Console
from rich.table import Table

from imaging.core.errors import ImagingError

# Piped output (logs, CI) is not squeezed to 80 columns: tables stay readable; COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


def _fail(exc: ImagingError) -> Exit:
    err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
    return Exit(code=1)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Tasks print ImagingError as one clear message and exit non-zero, never with a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImagingError as exc:
            raise _fail(exc) from None

    return wrapper


@contextmanager
def _context() -> Iterator[Any]:
    from imaging.ops.reimage import Context

    ctx = Context.load()
    try:
        yield ctx
    finally:
        ctx.close()


class StepPrinter:
    """Prints each step as it starts and ends, with its time: the progress display of one operation."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, ev: Any) -> None:
        label = {"undo": "undo", "stage": "stage"}.get(ev.phase, f"{ev.index + 1:2d}/{ev.total}")
        if ev.ok is None:
            if sys.stdout.isatty():
                console.print(f"[dim]{ev.instrument} {label} … {ev.step.summary}[/]", end="\r")
            return
        mark = "[green]ok[/]" if ev.ok else "[bold red]FAILED[/]"
        from imaging.model.steps import CHECK_ACTIONS

        extra = ""
        if ev.result and not ev.result.get("changed", True) and ev.step.action not in CHECK_ACTIONS:
            extra = " [dim](already done)[/]"
        if ev.result and ev.step.action == "rescue_user_files" and ev.result.get("files"):
            extra += "\n      rescued: " + ", ".join(ev.result["files"])
        if ev.error:
            extra += f"\n      {ev.error}"
        console.print(f"{ev.instrument} {label} {mark} {ev.seconds:6.2f}s  {ev.step.summary}{extra}",
                      soft_wrap=True)


def _print_plan(plan: Any) -> None:
    """A dry run: the plan in plain words, its notes, and the promise that nothing changed."""
    console.print(f"[bold]Plan: {plan.kind} of {plan.instrument} ({plan.vm} on {plan.host}) from "
                  f"{plan.from_release or 'nothing recorded'} to {plan.to_release}[/]")
    for line in plan.describe():
        console.print(line, soft_wrap=True)
    for note in plan.notes:
        console.print(f"  note: {note}", soft_wrap=True)
    console.print("[dim]dry run: nothing was changed[/]")


def _print_outcome(outcome: Any, instrument: str, journal: Any = None) -> None:
    if outcome.ok:
        console.print(f"[bold green]{instrument}: done[/] in {outcome.seconds:.2f}s (operation {outcome.op_id})")
        if journal is not None:
            op = journal.operation(outcome.op_id)
            changed = sum(1 for r in journal.steps(op.id) if r.phase == "do" and r.changed)
            rescued = [f for r in journal.steps(op.id) if r.action == "rescue_user_files" and r.result
                       for f in r.result.get("files", [])]
            console.print(f"  {op.kind}: {op.from_release or 'nothing recorded'} -> {op.to_release}; "
                          f"{changed} steps changed something; "
                          + (f"{len(rescued)} user file(s) rescued to Var" if rescued else "no user files to rescue"))
        return
    err_console.print(f"[bold red]{instrument}: failed at {outcome.failed_step}[/]: {outcome.error}",
                      soft_wrap=True)
    if outcome.restored:
        err_console.print(f"{instrument} was restored to its state before the operation ({outcome.status}).")
    else:
        err_console.print(f"{instrument} could not be fully restored; after fixing the cause run "
                          f"`invoke rollback --instrument={instrument}`.")
    raise Exit(code=1)


@task(help={"json": "print machine-readable JSON instead of a table",
            "instruments": "comma-separated instrument names (default: all)"})
@reports_errors
def status(c, json=False, instruments=""):  # noqa: ANN001
    """Show every instrument: host, VM, power, release running vs desired, last operation, pending work."""
    from imaging.ops.status import fleet_status

    with _context() as ctx:
        rows = fleet_status(ctx, [n for n in instruments.split(",") if n] or None)
    if json:
        print(jsonlib.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = Table(title="Fleet status")
    for col in ("instrument", "host", "VM", "power", "running", "desired", "last operation", "pending"):
        table.add_column(col)
    for r in rows:
        last = f"{r.last_operation} {r.last_result}" if r.last_operation else ""
        table.add_row(r.instrument, r.host, r.vm, r.power, r.running or "-", r.desired or "?", last, r.pending)
    console.print(table)
    for r in rows:
        if r.hint:
            console.print(f"{r.instrument}: {r.pending}: finish it with {r.hint}", soft_wrap=True)



@task
@reports_errors
def validate(c):  # noqa: ANN001
    """Check the whole inventory, releases and labels; exit non-zero on any problem. Changes nothing."""
    from imaging.ops.reimage import Context, desired_release

    with _context() as ctx:
        assert isinstance(ctx, Context)
        for inst in ctx.inventory.instruments.values():
            desired_release(ctx, inst)
        console.print(f"[green]inventory ok[/]: {len(ctx.inventory.instruments)} instruments on "
                      f"{len(ctx.inventory.hosts)} hosts in {len(ctx.inventory.groups)} groups; "
                      f"{len(ctx.releases)} releases")


@task
@reports_errors
def releases(c):  # noqa: ANN001
    """List releases newest first, with the labels that point to them and the instruments that run them."""
    from imaging.model.releases import newest_first
    from imaging.ops.reimage import running_release

    with _context() as ctx:
        runs: dict[str, list[str]] = {}
        for inst in ctx.inventory.instruments.values():
            r = running_release(ctx, inst)
            if r:
                runs.setdefault(r, []).append(inst.name)
        table = Table(title="Releases")
        for col in ("release", "settings", "labels", "running on", "notes"):
            table.add_column(col)
        for rel in newest_first(ctx.releases.values()):
            labels = [f"{g}:{label}" + ("!" if rel.revoked else "") for g, m in sorted(ctx.labels.items())
                      for label, rid in m.items() if rid == rel.id]
            note = rel.notes.strip().splitlines()[0] if rel.notes.strip() else ""
            if rel.revoked:
                note = f"REVOKED: {rel.revoked.reason}"
            table.add_row(rel.id, str(rel.settings_version), " ".join(labels),
                          ", ".join(sorted(runs.get(rel.id, []))) or "-", note)
        console.print(table)
        from imaging.ops.releases import revoked_labels

        for flag in revoked_labels(ctx):
            console.print(f"[bold red]label points to a revoked release:[/] {flag}", soft_wrap=True)


@task(help={"instrument": "the instrument to reimage (name like ZOOM or VM name like NDXZOOM)",
            "release": "release id or label to go to (default: the instrument's desired release)",
            "dry_run": "print the plan and change nothing",
            "allow_dirty": "render settings from a git tree with uncommitted changes (marked dirty)",
            "capture_drift": "save settings changed on the instrument (to its settings branch, or to "
                             "Var\\settings-drift\\<time>\\) before replacing them, instead of stopping",
            "settings_ref": "git ref (branch, tag, commit) to render settings templates from (default HEAD)",
            "drop_hotfix": "hotfix id(s), comma-separated, the instrument may lose (the release lacks them)"})
@reports_errors
def reimage(c, instrument, release=None, dry_run=False, allow_dirty=False, capture_drift=False,  # noqa: ANN001
            settings_ref="HEAD", drop_hotfix=""):
    """Reimage one instrument: new OS and Apps disks from the release, fresh Settings, Var and Data kept."""
    from imaging.ops import hotfix as hotfix_ops
    from imaging.ops import reimage as operations

    drops = tuple(h for h in drop_hotfix.split(",") if h)
    with _context() as ctx:
        if dry_run:
            inst = ctx.inventory.instrument(instrument)
            target = operations.desired_release(ctx, inst, release)
            hotfix_ops.refuse_dropped_hotfixes(ctx, inst, target, drops)
            plan = operations.plan_for_reimage(ctx, instrument, release, allow_dirty=allow_dirty,
                                               capture_drift=capture_drift, settings_ref=settings_ref)
            _print_plan(plan)
            return
        outcome = operations.reimage(ctx, instrument, release, listener=StepPrinter(), allow_dirty=allow_dirty,
                                     capture_drift=capture_drift, settings_ref=settings_ref, drop_hotfixes=drops)
        _print_outcome(outcome, ctx.inventory.instrument(instrument).name, ctx.journal)
        if outcome.error:
            err_console.print(f"[yellow]warning:[/] {outcome.error}", soft_wrap=True)


@task(help={"instrument": "the instrument whose interrupted operation should be finished"})
@reports_errors
def resume(c, instrument):  # noqa: ANN001
    """Finish an operation that was interrupted (the process was killed): continue from its last step."""
    from imaging.ops import reimage as operations

    with _context() as ctx:
        outcome = operations.resume(ctx, instrument, listener=StepPrinter())
        _print_outcome(outcome, ctx.inventory.instrument(instrument).name)


@task(help={"instrument": "the instrument to roll back",
            "dry_run": "print what would be undone and change nothing"})
@reports_errors
def rollback(c, instrument, dry_run=False):  # noqa: ANN001
    """Return an instrument to its state before its last operation: undo an interrupted one step by step, or
    else re-attach the previous OS, Apps and Settings disks (or revert the last hotfix)."""
    from imaging.ops import hotfix as hotfix_ops
    from imaging.ops import reimage as operations

    with _context() as ctx:
        inst = ctx.inventory.instrument(instrument)
        op = operations.interrupted(ctx, inst)
        if op is None:
            plan = hotfix_ops.plan_for_rollback(ctx, inst.name)
            if dry_run:
                _print_plan(plan)
                return
            outcome = hotfix_ops.rollback_last(ctx, inst.name, listener=StepPrinter())
            _print_outcome(outcome, inst.name)
            return
        if dry_run:
            console.print(f"would undo the changed steps of {op.kind} {op.id} in reverse")
            return
        outcome = ctx.executor(StepPrinter()).rollback_interrupted(op.id)
        if outcome.restored:
            console.print(f"[bold green]{inst.name}: rolled back[/] ({op.id})")
        else:
            raise ImagingError(f"{inst.name}: some undo steps failed; see `invoke status` and the journal")


@task(help={"release": "the release whose images to stage (id or label)",
            "group": "only the hosts of this group's instruments",
            "instruments": "only the hosts of these instruments (comma-separated)"})
@reports_errors
def stage(c, release, group=None, instruments=""):  # noqa: ANN001
    """Copy a release's images to each host that needs them, once per host, verified, resumable."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from imaging.model.labels import resolve
    from imaging.ops import reimage as operations

    with _context() as ctx:
        chosen = ctx.inventory.select(names=[n for n in instruments.split(",") if n] or None, group=group)
        pairs = sorted({(resolve(release, group=i.group, labels=ctx.labels, releases=ctx.releases,
                                 source="--release"), i.host) for i in chosen})
        summary: list[tuple[str, str, dict[str, Any], float]] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                      console=console, transient=not sys.stdout.isatty()) as bar:
            tasks: dict[tuple[str, str], Any] = {}

            def show(ev: Any) -> None:
                key = (ev.host, ev.artifact)
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{ev.host} {ev.artifact}", total=None)
                if ev.phase == "publish":
                    bar.update(tasks[key], completed=ev.done, total=ev.total or None,
                               description=f"{ev.host} {ev.artifact}: to the share")
                elif ev.result is None:
                    bar.update(tasks[key], description=f"{ev.host} {ev.artifact}: host pulls and verifies")
                else:
                    done = "copied" if ev.result.get("changed") else "already staged"
                    bar.update(tasks[key], description=f"{ev.host} {ev.artifact}: {done}")

            for rid, host in pairs:
                t0 = time.monotonic()
                for res in operations.stage(ctx, rid, host, progress=show):
                    summary.append((host, rid, res, time.monotonic() - t0))
        table = Table(title=f"Staged {release}")
        for col in ("host", "release", "artifact", "result", "bytes copied"):
            table.add_column(col)
        for host, rid, res, _ in summary:
            table.add_row(host, rid, res["name"], "copied, verified" if res.get("changed") else "already staged",
                          str(res.get("bytes", 0)))
        console.print(table)
        copied = sum(r.get("bytes", 0) for _, _, r, _ in summary)
        console.print(f"{len(pairs)} host(s), {sum(1 for s in summary if s[2].get('changed'))} image(s) copied, "
                      f"{copied} bytes")



# --- settings tasks ---
from invoke import task  # noqa: E402


def _settings_setup(instrument: str | None, all_: bool, release: str | None) -> tuple[Any, Any, list, dict]:
    """Inventory, paths, the chosen instruments and their releases (reads only; opens no journal)."""
    from imaging.core.config import Paths
    from imaging.core.errors import InputError
    from imaging.model.inventory import load_inventory
    from imaging.model.labels import load_labels
    from imaging.settings.instruments import release_name

    if bool(instrument) == bool(all_):
        raise InputError("give exactly one of --instrument=NAME or --all", field="--instrument",
                         fix="name one instrument (ZOOM or NDXZOOM), or pass --all for the whole fleet")
    paths = Paths.from_env()
    inventory = load_inventory(paths.inventory)
    chosen = [inventory.instrument(instrument)] if instrument else inventory.select()
    labels = load_labels(paths.releases)
    releases = {i.name: release_name(i, inventory, labels, release) for i in chosen}
    return paths, inventory, chosen, releases


@task(help={"instrument": "the instrument to render (ZOOM or NDXZOOM)",
            "all": "render every instrument of the inventory",
            "ref": "git branch, tag or commit of the project to render the templates from (default HEAD)",
            "out": "folder to write into (one sub-folder per instrument; default .state/rendered-settings)",
            "check": "render only to check for errors; write nothing",
            "release": "release id or label the settings are for (default: each instrument's desired release)",
            "allow_dirty": "render uncommitted template changes from the working tree (output marked dirty)"})
@reports_errors
def render(c, instrument=None, all=False, ref="HEAD", out=None, check=False, release=None,  # noqa: A002
           allow_dirty=False):  # noqa: ANN001
    """Render instrument settings from git into a folder for review, or check that every instrument renders."""
    from pathlib import Path

    from imaging.settings.instruments import render_many, write_rendered

    paths, inventory, chosen, releases = _settings_setup(instrument, all, release)
    results = render_many(paths.root, inventory, chosen, releases, ref=ref, allow_dirty=allow_dirty)
    dest = Path(out) if out else paths.state / "rendered-settings"
    failed = 0
    for res in results:
        if res.rendered is None:
            failed += 1
            err_console.print(f"[bold red]{res.instrument}: FAILED[/] {res.error}", soft_wrap=True)
            continue
        r = res.rendered
        where = ""
        if not check:
            write_rendered(r, dest / res.instrument)
            where = f" -> {dest / res.instrument}"
        dirty = " [yellow]DIRTY[/]" if r.dirty else ""
        commit = (r.provenance.get("commit") or "no commit")[:12]
        console.print(f"{res.instrument}: {len(r.files)} files, settings v{r.version}, {commit}, "
                      f"sha256 {r.sha256[:16]}{dirty}{where}", soft_wrap=True)
    console.print(f"{len(results) - failed} rendered, {failed} failed" + (" (check only: nothing written)"
                                                                        if check else ""))
    if failed:
        raise Exit(code=1)


@task(help={"instrument": "the instrument whose settings branch to migrate (ZOOM or NDXZOOM)",
            "all": "every instrument (only with --check)",
            "dry_run": "show the diff the migrations would make and commit nothing",
            "check": "rehearse the migrations on throw-away copies and report which would fail; changes nothing",
            "target": "settings version to migrate to (default: the newest the migrations reach)",
            "ref": "git ref of the project templates (used with --check when there is no settings repository)",
            "restore": "roll back: restore the instrument's branch to this commit (the one before the migrations)"})
@reports_errors
def migrate(c, instrument=None, all=False, dry_run=False, check=False, target=None, ref="HEAD",  # noqa: A002
            restore=None):  # noqa: ANN001
    """Run pending settings migrations on an instrument's settings branch, one commit per step."""
    from imaging.core.errors import InputError
    from imaging.settings import migrations
    from imaging.settings.instruments import migrate_instrument, rehearse_fleet

    if all and not check:
        raise InputError("--all is for rehearsals only", field="--all",
                         fix="use --all --check before a shutdown; migrate instruments one by one, or let "
                             "reimage migrate each instrument it reimages")
    paths, inventory, chosen, releases = _settings_setup(instrument, all, None)
    goal = int(target) if target is not None else migrations.latest_version()
    if restore:
        if inventory.settings_repo is None:
            raise InputError("there is no settings repository to restore", field="--restore",
                             fix="without one, roll back the instrument itself (`invoke rollback`)")
        new = migrations.restore_branch(inventory.settings_repo, chosen[0].vm, restore)
        console.print(f"{chosen[0].name}: branch {chosen[0].vm} restored to {restore[:12]} (commit {new[:12]})")
        return
    if check:
        results = rehearse_fleet(paths.root, inventory, chosen, releases, goal, ref=ref)
        for r in results:
            if r.ok:
                what = (f"v{r.from_version} -> v{r.to_version} via {', '.join(r.steps)}; "
                        f"{len(r.changed_files)} files change") if r.steps else f"already at v{r.to_version}"
                console.print(f"{r.name}: [green]ok[/] {what}", soft_wrap=True)
            else:
                err_console.print(f"{r.name}: [bold red]WOULD FAIL[/] {r.error}", soft_wrap=True)
        bad = [r for r in results if not r.ok]
        console.print(f"{len(results) - len(bad)} ok, {len(bad)} would fail; rehearsal only, nothing was changed")
        if bad:
            raise Exit(code=1)
        return
    inst = chosen[0]
    result = migrate_instrument(inventory, inst, goal, dry_run=dry_run)
    if result is None:
        console.print(f"{inst.name}: no settings repository; its settings are rendered from the templates "
                      f"(version {migrations.latest_version()}), so there is nothing to migrate")
        return
    if not result.steps:
        console.print(f"{inst.name}: branch {result.branch} is already at settings v{result.from_version}")
        return
    if dry_run:
        console.print(result.diff, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{inst.name}: would run {', '.join(result.steps)} (v{result.from_version} -> "
                      f"v{result.to_version}); dry run: nothing was committed")
        return
    console.print(f"{inst.name}: ran {', '.join(result.steps)} (v{result.from_version} -> v{result.to_version}); "
                  f"branch {result.branch} now at {result.after_commit[:12]}. To roll back: invoke migrate "
                  f"--instrument={inst.name} --restore={result.before_commit}")


# --- hotfix tasks ---


def _confirm(question: str, yes: bool) -> None:
    """Ask before a fleet run changes anything; unattended runs must say --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ImagingError("not confirmed: pass --yes to run without a question (unattended runs)")
    from rich.prompt import Confirm

    if not Confirm.ask(question, console=console):
        raise ImagingError("not confirmed; nothing was changed")


@task(help={"patch": "the hotfix package: a folder with hotfix.yaml, or a .tar/.tar.gz of one",
            "revert": "instead of applying, revert this hotfix id",
            "instruments": "comma-separated instrument names, or @failed for the failures of the last hotfix "
                           "(or, with --revert, of the last revert)",
            "group": "every instrument of this group",
            "canary": "the instrument hotfixed alone first (default: the first of the selection; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "check the package and that each instrument runs a release it applies to; change nothing"})
@reports_errors
def hotfix(c, patch=None, revert=None, instruments="", group=None, canary=None, batches="100%",  # noqa: ANN001
           parallel=4, max_fail_percent=100.0, yes=False, dry_run=False):
    """Apply a hotfix to running instruments without a reimage (or revert one), in waves like a deploy,
    recorded on each and in the journal; a failure on one instrument restores that instrument's files."""
    from pathlib import Path

    from imaging.engine.scheduler import Job, parse_batches, plan_waves
    from imaging.ops import deploy as fleet
    from imaging.ops import hotfix as hotfix_ops

    if bool(patch) == bool(revert):
        raise ImagingError("give exactly one of --patch=PATH or --revert=ID")
    kind = "revert" if revert else "hotfix"
    options = fleet.Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                            canary="" if canary == "none" else canary, batches=batches)
    with _context() as ctx:
        insts = fleet.select(ctx, group=group, instruments=instruments, kind=kind)
        names = [i.name for i in insts]
        if revert:
            what = f"revert {revert}"
            hotfix_ops.check_carries(ctx, insts, revert)
        else:
            pkg = hotfix_ops.load_package(ctx, Path(patch))
            hotfix_ops.check_applies(ctx, insts, pkg.hotfix, pkg.source)
            what = f"hotfix {pkg.hotfix.id}"
            console.print(f"[bold]{pkg.hotfix.id}[/]: {pkg.hotfix.description}")
            console.print(f"applies to {', '.join(pkg.hotfix.applies_to)}; {len(pkg.hotfix.files)} file(s); "
                          f"restarts {', '.join(pkg.hotfix.restart) or 'nothing'}")
        waves = plan_waves([Job(i.name, i.host) for i in insts], canary=options.canary,
                           batches=parse_batches(options.batches))
        console.print(f"{what} on {len(names)} instruments; waves: "
                      f"{' | '.join(', '.join(j.name for j in w) for w in waves)}", soft_wrap=True)
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        _confirm(f"{what} on {len(names)} instruments?", yes)
        display = _DeployDisplay(len(names), what=kind)
        if revert:
            result = _run_live(display, lambda: hotfix_ops.revert(ctx, names, revert, options, progress=display))
        else:
            result = _run_live(display, lambda: hotfix_ops.hotfix(ctx, names, Path(patch), options,
                                                                  progress=display))
        _print_recap(result)
        if result.summary.stopped or result.summary.names("failed"):
            raise Exit(code=1)


@task(help={"json": "print machine-readable JSON instead of a table"})
@reports_errors
def hotfixes(c, json=False):  # noqa: ANN001
    """List which instruments carry which hotfixes (from the journal; the ledger on each Var disk agrees)."""
    from imaging.ops import hotfix as hotfix_ops

    with _context() as ctx:
        carried = hotfix_ops.list_hotfixes(ctx)
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
# --- release management tasks ---

def _records(ctx: Any) -> Any:
    from imaging.state.builds import BuildRecords

    return BuildRecords(ctx.paths.state / "builds")


def _commit_note(result: Any) -> None:
    if result is None:
        return
    if result.committed:
        console.print(f"committed {result.detail}")
    else:
        console.print(f"[yellow]not committed:[/] {result.detail}", soft_wrap=True)


@task(help={"release": "the release whose Apps disk to build (an id with a releases/<id>.yaml)",
            "source": "the software tree (server, client, python, version.txt): a local folder, or with "
                      "--host a Windows or UNC path the build host can read",
            "host": "build on this inventory host (a hyperv host runs New-VHD, Format-Volume and a copy); "
                    "default: build here with qemu-utils, ntfs-3g and wimtools",
            "size_gb": "virtual disk size in GiB (default: the tree's size plus room; required with --host)",
            "workdir": "scratch folder for a local build (default: the state folder's tmp)",
            "dry_run": "check the inputs and say what would be built; build nothing"})
@reports_errors
def build_apps(c, release, source, host=None, size_gb=None, workdir=None, dry_run=False):  # noqa: ANN001
    """Build the Apps disk of a release into a VHDX (GPT, one NTFS partition labelled Apps), with its manifest."""
    from pathlib import Path

    from imaging.images import build

    with _context() as ctx:
        recs = _records(ctx)
        if release not in ctx.releases:
            raise ImagingError(f"no release {release}; known: {', '.join(sorted(ctx.releases))}")
        rel = ctx.releases[release]
        if host:
            h = ctx.inventory.hosts.get(host)
            if h is None:
                raise ImagingError(f"no host {host} in the inventory; known: {', '.join(sorted(ctx.inventory.hosts))}")
            if not size_gb:
                raise ImagingError("--size-gb is required when building on a host")
            step = build.apps_build_step(h, rel, source_path=source, size_gb=int(size_gb))
            if dry_run:
                console.print(f"would run on {host}: {step.summary} into {step.inputs['vhd_path']}")
                return
            rec = build.build_apps_on_host(records=recs, run=ctx.providers.run, host=h, rel=rel,
                                           source_path=source, size_gb=int(size_gb))
            console.print(f"[green]built[/] {rel.apps.name} on {host}: sha256 {rec.sha256}, {rec.size} bytes "
                          f"(record {recs.path('apps', rel.apps.name)})")
            return
        src = build.check_apps_source(Path(source), rel)
        size = int(size_gb) * 1024 ** 3 if size_gb else None
        if dry_run:
            console.print(f"would build {rel.apps.name} ({rel.apps.version}) from {src} and add it to the store")
            return
        t0 = time.monotonic()
        result = build.build_apps(store=ctx.store, records=recs, releases=ctx.releases, release=release,
                                  source=src, workdir=Path(workdir) if workdir else ctx.paths.state / "tmp",
                                  size_bytes=size)
        m = result.manifest
        console.print(f"[green]built[/] {rel.apps.name}: {len(m.files)} files, image {m.image_size} bytes, "
                      f"sha256 {m.image_sha256} in {time.monotonic() - t0:.1f}s")


@task(help={"release": "verify the stored Apps image of this release against its build manifest",
            "image": "verify this VHDX file instead (with --manifest)",
            "manifest": "the manifest JSON for --image",
            "workdir": "scratch folder (default: the state folder's tmp)"})
@reports_errors
def verify_image(c, release=None, image=None, manifest=None, workdir=None):  # noqa: ANN001
    """Read a built image back (without mounting) and compare every file with its manifest."""
    from pathlib import Path

    from imaging.images import build, vhdx
    from imaging.images.manifest import ImageManifest

    with _context() as ctx:
        scratch = Path(workdir) if workdir else ctx.paths.state / "tmp"
        if image:
            if not manifest:
                raise ImagingError("--image needs --manifest")
            problems = vhdx.verify_image(Path(image), ImageManifest.load(Path(manifest)), workdir=scratch)
            what = image
        elif release:
            if release not in ctx.releases:
                raise ImagingError(f"no release {release}")
            what = ctx.releases[release].apps.name
            problems = build.verify_stored(store=ctx.store, records=_records(ctx), name=what, workdir=scratch)
        else:
            raise ImagingError("give --release, or --image with --manifest")
    if problems:
        for p in problems:
            err_console.print(f"[red]{what}:[/] {p}", soft_wrap=True)
        raise Exit(code=1)
    console.print(f"[green]{what}: matches its manifest[/]")


@task(help={"version": "template version, e.g. win11-ltsc-2026.1",
            "base": "lab: the folder holding the template's C: drive",
            "host": "hyperv: the build host",
            "iso": "hyperv: the Windows installation ISO on the build host (Windows path)",
            "image_index": "hyperv: the edition's index in install.wim (default 1)",
            "dry_run": "render and print what would be done; build nothing"})
@reports_errors
def build_template(c, version, base=None, host=None, iso=None, image_index=1, dry_run=False):  # noqa: ANN001
    """Build a read-only, versioned OS template (lab: from a base tree; hyperv: from an installation ISO)."""
    import os
    from pathlib import Path

    from imaging.images import build
    from imaging.images.answer_files import TemplateSettings, render_provision, render_unattend

    with _context() as ctx:
        recs = _records(ctx)
        build.check_template_version(version, field="--version")
        if base:
            if dry_run:
                console.print(f"would register lab template {version} from {base}")
                return
            rec = build.build_lab_template(store=ctx.store, records=recs, version=version, base=Path(base),
                                           workdir=ctx.paths.state / "tmp")
            console.print(f"[green]template {version}[/]: sha256 {rec.sha256}, {rec.size} bytes")
            return
        if not (host and iso):
            raise ImagingError("give --base (lab) or --host and --iso (hyperv)")
        h = ctx.inventory.hosts.get(host)
        if h is None:
            raise ImagingError(f"no host {host} in the inventory")
        settings = TemplateSettings(version=version, admin_password=os.environ.get("IMAGING_TEMPLATE_PASSWORD", ""))
        step = build.template_build_step(h, version, iso_path=iso, image_index=int(image_index),
                                         unattend=render_unattend(settings, templates=ctx.paths.templates),
                                         provision=render_provision(settings, templates=ctx.paths.templates))
        if dry_run:
            console.print(f"would run on {host}: {step.summary} into {step.inputs['vhd_path']}")
            return
        rec = build.build_template_on_host(records=recs, run=ctx.providers.run, step=step)
        console.print(f"[green]template {version}[/] built on {host}: sha256 {rec.sha256}")


@task(help={"release": "the release to point the label at",
            "label": "current, qa or recommended (current moves the old current to previous)",
            "group": "the release group whose label moves",
            "force": "promote even without a successful canary deploy in the group",
            "dry_run": "say what would move; change nothing"})
@reports_errors
def promote(c, release, label, group, force=False, dry_run=False):  # noqa: ANN001
    """Move a label to a release (refused without a successful canary in the group unless --force); commits."""
    from imaging.ops import releases as release_ops

    with _context() as ctx:
        promo, commit = release_ops.promote(ctx, release=release, label=label, group=group, force=force,
                                            dry_run=dry_run)
    for note in promo.notes:
        console.print(note)
    for mv in promo.moves:
        console.print(("would move " if dry_run else "moved ") + mv.describe())
    if promo.canaries:
        console.print(f"canary: {', '.join(promo.canaries)}")
    elif promo.forced:
        console.print("[yellow]no canary: forced[/]")
    if dry_run:
        console.print("[dim]dry run: nothing was changed[/]")
    _commit_note(commit)


@task(help={"release": "the release to revoke", "reason": "why it is bad (kept in releases/<id>.yaml)",
            "dry_run": "say what would happen; change nothing"})
@reports_errors
def revoke(c, release, reason, dry_run=False):  # noqa: ANN001
    """Mark a release bad: deploys to it are refused and labels pointing to it are flagged; commits."""
    from imaging.ops import releases as release_ops

    with _context() as ctx:
        rev, commit, pointing = release_ops.revoke(ctx, release=release, reason=reason, dry_run=dry_run)
    if dry_run:
        console.print(f"would revoke {release}: {reason}")
    else:
        console.print(f"[bold]revoked {release}[/]: {rev.reason} ({rev.who}, {rev.when.isoformat()})")
    if pointing:
        console.print(f"[yellow]labels still pointing to it:[/] {', '.join(pointing)}; move them with "
                      f"`invoke promote`")
    _commit_note(commit)


@task(help={"apply": "remove what is not kept (default: dry run, only list)"})
@reports_errors
def prune(c, apply=False):  # noqa: ANN001
    """Keep the two newest good releases per image kind plus everything in use; remove the rest's images."""
    from imaging.ops import releases as release_ops

    with _context() as ctx:
        report = release_ops.prune(ctx, apply=apply)
    table = Table(title="Retention")
    for col in ("artifact", "kind", "releases", "decision", "why"):
        table.add_column(col)
    for d in report.decisions:
        table.add_row(d.artifact, d.kind, ", ".join(d.releases) or "-", "keep" if d.keep else "prune",
                      "; ".join(d.reasons))
    console.print(table)
    if not apply:
        console.print(f"[dim]dry run: {len(report.to_remove)} to prune; run with --apply to remove them[/]")
        return
    console.print(f"pruned {len(report.to_remove)}: blobs removed {', '.join(report.removed_blobs) or '-'}; "
                  f"staged copies removed {', '.join(report.unstaged) or '-'}; manifests and build records kept")




# --- deploy tasks ---


class _DeployDisplay:
    """Live view of a deploy: one line per running instrument (step, elapsed) and a total bar."""

    def __init__(self, total: int, what: str = "") -> None:
        import threading

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.lock = threading.Lock()
        self.running: dict[str, tuple[str, float]] = {}
        self.bar = Progress(TextColumn("total"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)
        self.task = self.bar.add_task("deploy", total=total)
        self.lines: list[str] = []
        self.what = what  # "hotfix"/"revert": end lines read "ZOOM: hotfix done"; deploys: "ZOOM ok"

    def __rich__(self) -> Any:
        from rich.console import Group

        now = time.monotonic()
        with self.lock:
            rows = [f"  {name:<10} {now - t0:6.1f}s  {step}" for name, (step, t0) in sorted(self.running.items())]
        return Group(*rows, self.bar)

    def __call__(self, kind: str, payload: Any) -> None:
        with self.lock:
            if kind == "step":
                ev = payload
                _, t0 = self.running.get(ev.instrument, ("", time.monotonic()))
                label = "undo " if ev.phase == "undo" else f"{ev.index + 1}/{ev.total} "
                self.running[ev.instrument] = (label + ev.step.action, t0)
                return
            ev = payload
            if ev.kind == "job_start" and ev.job:
                self.running[ev.job.name] = ("starting", time.monotonic())
            elif ev.kind == "job_end" and ev.job and ev.result:
                self.running.pop(ev.job.name, None)
                self.bar.advance(self.task)
                r = ev.result
                color = {"ok": "green", "failed": "bold red", "skipped": "yellow"}.get(r.status, "")
                extra = f" at {r.step}: {r.detail}" if r.status == "failed" else (f": {r.detail}" if r.detail else "")
                word = {"ok": "done"}.get(r.status, r.status)
                head = f"{ev.job.name}: {self.what} {word}" if self.what else f"{ev.job.name} {r.status}"
                console.print(f"[{color}]{head}[/]{extra}", soft_wrap=True)
            elif ev.kind == "wave_start":
                console.print(f"[bold]wave {ev.wave + 1}[/] ({ev.message})")
            elif ev.kind == "stop":
                console.print(f"[bold red]stopping:[/] {ev.message}", soft_wrap=True)


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _print_fleet_plan(rows: Any, prediction: Any) -> None:
    table = Table(title="Fleet plan")
    for col in ("instrument", "host", "now", "after", "migrations", "hotfixes dropped", "not staged", "estimate",
                "note"):
        table.add_column(col)
    for r in rows:
        staged = "?" if r.not_staged is None else (", ".join(r.not_staged) or "-")
        table.add_row(r.instrument, r.host, r.now or "-", r.after, ", ".join(r.migrations) or "-",
                      ", ".join(r.hotfixes_dropped) or "-", staged, _fmt_s(r.estimate_s), r.note)
    console.print(table)
    console.print(f"waves: {' | '.join(', '.join(w) for w in prediction.summary.waves)}", soft_wrap=True)
    console.print(f"estimated duration (time model): {_fmt_s(prediction.makespan)}")


def _print_prediction(p: Any) -> None:
    from imaging.engine.simulate import critical_resource

    console.print(f"[bold]predicted total duration: {_fmt_s(p.makespan)}[/] "
                  f"(lower bound {_fmt_s(p.lower_bound)}, set by {p.bound_resource}; "
                  f"ratio {p.makespan / p.lower_bound:.2f})")
    table = Table(title="Per-host utilisation")
    for col in ("host", "slots busy", "disk busy"):
        table.add_column(col)
    for host, slots in p.slot_use.items():
        table.add_row(host, f"{slots:.0%}", f"{p.utilisation.get('disk:' + host, 0.0):.0%}")
    console.print(table)
    if "share" in p.utilisation:
        console.print(f"image share busy {p.utilisation['share']:.0%} of the time")
    name, share = critical_resource(p)
    console.print(f"critical resource: {name} ({share:.0%} busy)")


def _state_cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return value or "-"


def _print_recap(result: Any) -> None:
    """The end-of-run table of any fleet run (deploy, hotfix, revert); before/after are the release, or the
    hotfixes carried."""
    from imaging.ops.deploy import subject

    rec = result.record
    kind = rec.get("kind", "deploy")
    table = Table(title=f"{kind.capitalize()} {rec['id']}: {subject(rec)}")
    for col in ("instrument", "before", "after", "result", "time", "step", "detail"):
        table.add_column(col)
    counts: dict[str, int] = {}
    for name in rec["selection"]:
        r = rec["results"].get(name, {"status": "not_started"})
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        secs = r.get("seconds")
        table.add_row(name, _state_cell(rec["before"].get(name)), _state_cell(rec.get("after", {}).get(name)),
                      r["status"],
                      _fmt_s(secs) if secs is not None else "", r.get("step") or "", r.get("detail") or "")
    console.print(table)
    console.print(" ".join(f"{k}: {counts.get(k, 0)}" for k in ("ok", "failed", "skipped", "not_started")))
    if rec.get("stopped"):
        err_console.print(f"[bold red]{kind} stopped:[/] {rec['stopped']}", soft_wrap=True)
    console.print(f"report: {result.report_md} and {result.report_json}")


@task(help={"release": "the release (id or label) to deploy",
            "group": "deploy this group's instruments",
            "instruments": "comma-separated names, or @failed for the failures of the last deploy",
            "all": "deploy every instrument",
            "canary": "the instrument deployed alone first (default: the first of the selection; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "print the fleet plan and stop",
            "resume": "continue the interrupted deploy (its record and the journal say where)",
            "simulate": "predict the deploy on a virtual clock with the time model; change nothing",
            "model": "a YAML file overriding the time model's defaults (see docs/deploy.md)",
            "force": "reimage instruments that already run the release",
            "pulls": "hosts pulling images from the share at once, for hosts not staged beforehand",
            "drop_hotfix": "comma-separated hotfix ids the deploy may drop (the release neither includes them nor "
                           "is declared for them); without it such a deploy is refused before any change"})
@reports_errors
def deploy(c, release="", group=None, instruments="", all=False, canary=None, batches="100%",  # noqa: A002, ANN001
           parallel=4, max_fail_percent=100.0, yes=False, dry_run=False, resume=False, simulate=False,
           model=None, force=False, pulls=4, drop_hotfix=""):
    """Reimage many instruments in waves: plan, confirm, canary, batches, limits, recap and report."""
    from pathlib import Path

    from imaging.engine.simulate import TimeModel
    from imaging.ops import deploy as fleet

    tm = TimeModel.load(Path(model) if model else None)
    with _context() as ctx:
        if resume:
            display = _DeployDisplay(0)
            rec = fleet.resumable(ctx)
            if rec is None:
                raise ImagingError("no interrupted deploy to resume")
            display.bar.update(display.task, total=len(rec["selection"]))
            console.print(f"resuming {rec['id']} ({rec['release']}, {len(rec['selection'])} instruments)")
            result = _run_live(display, lambda: fleet.resume(ctx, deploy_id=rec["id"], model=tm, progress=display))
            _print_recap(result)
            if result.summary.stopped or result.summary.names("failed"):
                raise Exit(code=1)
            return
        if not release:
            raise ImagingError("--release is required (a release id like 2026C3.0 or a label)")
        options = fleet.Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                                canary="" if canary == "none" else canary, batches=batches, force=force,
                                pulls=int(pulls),
                                drop_hotfixes=tuple(h.strip() for h in drop_hotfix.split(",") if h.strip()))
        insts = fleet.select(ctx, group=group, instruments=instruments, everything=all)
        prediction = fleet.simulate(ctx, insts, release, options, tm)
        if simulate:
            console.print(f"simulating {len(insts)} instruments, waves "
                          f"{' | '.join(str(len(w)) for w in prediction.summary.waves)}, --parallel={parallel}")
            _print_prediction(prediction)
            return
        rows = fleet.fleet_plan(ctx, insts, release, tm)
        _print_fleet_plan(rows, prediction)
        fleet.refuse_lost_hotfixes(ctx, insts, {r.instrument: r.after for r in rows}, options.drop_hotfixes)
        if options.drop_hotfixes:
            console.print(f"hotfixes dropped on purpose (--drop-hotfix): {', '.join(options.drop_hotfixes)}")
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        _confirm(f"deploy {release} to {len(insts)} instruments?", yes)
        display = _DeployDisplay(len(insts))
        result = _run_live(display, lambda: fleet.deploy(ctx, insts, release, options, model=tm, progress=display))
        _print_recap(result)
        if result.summary.stopped or result.summary.names("failed"):
            raise Exit(code=1)


def _run_live(display: _DeployDisplay, fn: Callable[[], Any]) -> Any:
    from rich.live import Live

    if not console.is_terminal:
        return fn()
    with Live(display, console=console, refresh_per_second=4, transient=True):
        return fn()
