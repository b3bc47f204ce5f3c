"""Tasks about settings: render them from git for review, migrate or rehearse their format, make branches,
and apply a settings change to running instruments."""

from __future__ import annotations

from pathlib import Path

from invoke import Exit, task
from rich.table import Table

from imaging.cli.ui import (
    FleetDisplay,
    confirm,
    console,
    context,
    err_console,
    names,
    print_abort_rule,
    print_recap,
    reports_errors,
    run_live,
)
from imaging.core.errors import InputError
from imaging.ops import apply_settings as applying
from imaging.ops import facts
from imaging.ops import settings as settings_ops
from imaging.ops.deploy import DEFAULT_MAX_FAIL_PERCENT, Options


@task(help={"instrument": "the instrument to render (ZOOM or NDXZOOM)",
            "all": "render every instrument of the inventory",
            "ref": "git branch, tag or commit to read the templates at (default: each release's settings_templates)",
            "out": "folder to write into (one sub-folder per instrument; default .state/rendered-settings)",
            "check": "render only to check for errors; write nothing",
            "release": "release id or label the settings are for (default: each instrument's desired release)",
            "allow_dirty": "render uncommitted template changes from the working tree (output marked dirty)"})
@reports_errors
def render(c, instrument=None, all=False, ref=None, out=None, check=False, release=None,  # noqa: A002
           allow_dirty=False):  # noqa: ANN001
    """Render instrument settings from git into a folder for review, or check that every instrument renders."""
    with context() as ctx:
        chosen = settings_ops.choose(ctx, instrument, all)
        done = settings_ops.render(ctx, chosen, release=release, ref=ref, allow_dirty=allow_dirty,
                                   out=Path(out) if out else None, check=check)
    for res in done.results:
        if res.rendered is None:
            err_console.print(f"[bold red]{res.instrument}: FAILED[/] {res.error}", soft_wrap=True)
            continue
        r = res.rendered
        where = f" -> {done.written[res.instrument]}" if res.instrument in done.written else ""
        dirty = " [yellow]DIRTY[/]" if r.dirty and not res.no_branch else ""
        if res.no_branch:
            dirty = " (no settings branch yet: rendered from the common line; its first deploy makes it)"
        commit = (r.provenance.get("commit") or "no commit")[:12]
        console.print(f"{res.instrument}: {len(r.files)} files, settings v{r.version}, {commit}, "
                      f"sha256 {r.sha256[:16]}{dirty}{where}", soft_wrap=True)
    console.print(f"{len(done.results) - done.failed} rendered, {done.failed} failed"
                  + (" (check only: nothing written)" if check else ""))
    unmade = [r.instrument for r in done.results if r.no_branch]
    if unmade:
        console.print(f"{len(unmade)} instrument(s) have no settings branch yet: {', '.join(unmade)}; "
                      "`invoke settings-init --instruments=...` makes them ahead of their first deploy",
                      soft_wrap=True)
    if done.failed:
        raise Exit(code=1)


@task(help={"instrument": "the instrument whose settings branch to migrate (ZOOM or NDXZOOM)",
            "all": "every instrument (only with --check)",
            "dry_run": "show the diff the migrations would make and commit nothing",
            "check": "rehearse the migrations on throw-away copies and report which would fail; changes nothing",
            "target": "settings version to migrate to (default: the newest the migrations reach)",
            "ref": "git ref of the templates (--check without a settings repository; default: each release's)",
            "restore": "roll back: restore the instrument's branch to this commit (the one before the migrations)"})
@reports_errors
def migrate(c, instrument=None, all=False, dry_run=False, check=False, target=None, ref=None,  # noqa: A002
            restore=None):  # noqa: ANN001
    """Run pending settings migrations on an instrument's settings branch, one commit per step."""
    if all and not check:
        raise InputError("--all is for rehearsals only", field="--all",
                         fix="use --all --check before a shutdown; migrate instruments one by one, or let "
                             "reimage migrate each instrument it reimages")
    with context() as ctx:
        chosen = settings_ops.choose(ctx, instrument, all)
        if restore:
            new = settings_ops.restore(ctx, chosen[0], restore)
            console.print(f"{chosen[0].name}: branch {chosen[0].vm} restored to {restore[:12]} (commit {new[:12]})")
            return
        if check:
            results = settings_ops.rehearse(ctx, chosen, target=target, ref=ref)
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
        result = settings_ops.migrate(ctx, inst, target=target, dry_run=dry_run)
    if result is None:
        console.print(f"{inst.name}: no settings repository; its settings are rendered from the templates "
                      f"(version {settings_ops.target_version(None)}), so there is nothing to migrate")
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


@task(help={"instruments": "comma-separated instruments (default with --all: every one without a branch)",
            "all": "every instrument of the inventory",
            "dry_run": "list the branches it would make; change nothing"})
@reports_errors
def settings_init(c, instruments="", all=False, dry_run=False):  # noqa: A002, ANN001
    """Make the settings branch of each instrument that has none, from the settings repository's common line,
    with a commit that says so (a deploy makes it at the instrument's first render otherwise)."""
    with context() as ctx:
        chosen = [ctx.inventory.instrument(n) for n in names(instruments)] if instruments else \
            (list(ctx.inventory.instruments.values()) if all else [])
        if not chosen:
            raise InputError("no instrument chosen", field="--instruments", fix="name instruments, or pass --all")
        made = settings_ops.init_branches(ctx, chosen, dry_run=dry_run)
    for m in made:
        if isinstance(m, str):
            console.print(f"would make branch {m}")
        else:
            console.print(f"{m.instrument}: branch {m.branch} made from {m.common} ({m.commit[:10]})")
    console.print(f"{len(made)} branch(es) {'to make (dry run: nothing changed)' if dry_run else 'made'}; "
                  f"{len(chosen) - len(made)} had one")


@task(help={"dest": "where to make it (default: .state/sample-settings-repo)"})
@reports_errors
def settings_sample(c, dest=None):  # noqa: ANN001
    """Make a sample settings repository for the shipped fleet, to rehearse on: a common line, branches at
    older formats (LET and WISH at 3, MARI at 4), two at the current one, and the rest with no branch yet."""
    with context() as ctx:
        where = settings_ops.sample_repo(ctx, Path(dest) if dest else ctx.paths.state / "sample-settings-repo")
    console.print(f"sample settings repository: {where}")
    console.print(f"use it: add `settings_repo: {where}` to instruments/defaults.yaml, then `invoke render --all "
                  "--check` and `invoke migrate --all --check`", soft_wrap=True)


@task(help={"instruments": "comma-separated instrument names, or @failed for the failures of the last apply-settings",
            "group": "every instrument of this group",
            "all": "every instrument of the inventory",
            "ref": "git ref to read the settings templates at (default: each running release's settings_templates)",
            "canary": "the instrument changed alone first (default: the first to change; 'none': no canary)",
            "batches": "wave sizes after the canary, e.g. 1,5,20% (the last size repeats); default 100%",
            "parallel": "at most this many instruments at once (each host's max_concurrent also holds)",
            "max_fail_percent": "stop starting instruments when more than this share of a wave failed (default 10)",
            "allow_dirty": "render from uncommitted inventory files (recorded; every provenance says dirty)",
            "yes": "do not ask for confirmation (unattended runs)",
            "dry_run": "show what would change on each instrument and which services restart; change nothing"})
@reports_errors
def apply_settings(c, instruments="", group=None, all=False, ref=None, canary=None, batches="100%",  # noqa: A002, ANN001
                   parallel=4, max_fail_percent=DEFAULT_MAX_FAIL_PERCENT, allow_dirty=False, yes=False, dry_run=False):
    """Change the settings of running instruments without a reimage: render them for the release each runs,
    check drift, and put the changed files in place inside the guest, restarting only the services that read
    them (the VM keeps running). Recorded in the journal and on Var; `invoke rollback` puts them back."""
    options = Options(parallel=int(parallel), max_fail_percent=float(max_fail_percent),
                      canary="" if canary == "none" else canary, batches=batches, allow_dirty=allow_dirty)
    with context() as ctx:
        insts = facts.select(ctx, group=group, instruments=instruments, everything=all, kind="apply-settings")
        run = applying.prepare_apply(ctx, insts, ref=ref, options=options)
        table = Table(title="Settings to apply")
        for col in ("instrument", "release", "files that change", "services restarted", "note"):
            table.add_column(col, overflow="fold")
        for ch in run.changes:
            if ch.change is None:
                table.add_row(ch.instrument, ch.release, "-", "-", "up to date")
                continue
            note = f"no service named for {', '.join(ch.unread)}: read when next opened" if ch.unread else ""
            table.add_row(ch.instrument, ch.release, "\n".join(ch.change.changed),
                          ", ".join(ch.change.services) or "none", note)
        console.print(table)
        if not run.instruments:
            console.print("nothing to apply: every instrument's settings are up to date")
            return
        console.print(f"waves: {' | '.join(', '.join(j.name for j in w) for w in run.waves)}", soft_wrap=True)
        print_abort_rule([j.name for w in run.waves for j in w], options)
        if dry_run:
            console.print("[dim]dry run: nothing was changed[/]")
            return
        confirm(f"apply settings to {len(run.instruments)} running instrument(s)?", yes)
        display = FleetDisplay(len(run.instruments), what="apply-settings")
        print_recap(run_live(display, lambda: applying.run_apply(ctx, run, progress=display)))
