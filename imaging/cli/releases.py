"""Tasks about releases: list them, build their images, read images back, move labels, revoke, prune."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import Exit, task
from rich.table import Table

from imaging.cli.ui import console, context, err_console, reports_errors
from imaging.ops import build as builds
from imaging.ops import new_release as new_releases
from imaging.ops import releases as release_ops


def _commit_note(result: object) -> None:
    if result is None:
        return
    if result.committed:
        console.print(f"committed {result.detail}")
    else:
        console.print(f"[yellow]not committed:[/] {result.detail}", soft_wrap=True)


@task
@reports_errors
def releases(c):  # noqa: ANN001
    """List releases newest first, with the labels that point to them and the instruments that run them."""
    with context() as ctx:
        rows = release_ops.release_rows(ctx)
        flags = release_ops.revoked_labels(ctx)
    table = Table(title="Releases")
    for col in ("release", "settings", "labels", "built (sha256)", "published", "staged on", "deployable",
                "running on"):
        table.add_column(col)
    for row in rows:
        rel = row.release
        built = "\n".join(f"{kind} {v[:12] if len(v) == 64 else v}"
                          for kind, v in zip(("os", "apps"), row.built.values(), strict=True))
        running = ", ".join(row.running_on) if len(row.running_on) <= 3 else f"{len(row.running_on)} instruments"
        table.add_row(rel.id, str(rel.settings_version), " ".join(row.labels), built,
                      ", ".join(row.published) or "-", ", ".join(row.staged_on) or "-", row.deployable,
                      running or "-")
    console.print(table)
    for flag in flags:
        console.print(f"[bold red]label points to a revoked release:[/] {flag}", soft_wrap=True)


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
    t0 = time.monotonic()
    with context() as ctx:
        done = builds.build_apps(ctx, release, source, host=host, size_gb=int(size_gb) if size_gb else None,
                                 workdir=Path(workdir) if workdir else None, dry_run=dry_run)
        record_path = ctx.builds.path("apps", done.release.apps.name)
    rel = done.release
    if done.step is not None:
        if dry_run:
            console.print(f"would run on {host}: {done.step.summary} into {done.step.inputs['vhd_path']}")
            return
        rec = done.record
        console.print(f"[green]built[/] {rel.apps.name} on {host}: sha256 {rec.sha256}, {rec.size} bytes "
                      f"(record {record_path})")
        return
    if dry_run:
        console.print(f"would build {rel.apps.name} ({rel.apps.version}) from {done.source} and add it to the store")
        return
    m = done.result.manifest
    console.print(f"[green]built[/] {rel.apps.name}: {len(m.files)} files, image {m.image_size} bytes, "
                  f"sha256 {m.image_sha256} in {time.monotonic() - t0:.1f}s")


@task(help={"release": "verify the stored Apps image of this release against its build manifest",
            "image": "verify this VHDX file instead (with --manifest)",
            "manifest": "the manifest JSON for --image",
            "workdir": "scratch folder (default: the state folder's tmp)"})
@reports_errors
def verify_image(c, release=None, image=None, manifest=None, workdir=None):  # noqa: ANN001
    """Read a built image back (without mounting) and compare every file with its manifest."""
    with context() as ctx:
        what, problems = builds.verify_image(ctx, release=release, image=Path(image) if image else None,
                                             manifest=Path(manifest) if manifest else None,
                                             workdir=Path(workdir) if workdir else None)
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
    with context() as ctx:
        done = builds.build_template(ctx, version, base=Path(base) if base else None, host=host, iso=iso,
                                     image_index=int(image_index), dry_run=dry_run)
    if done.step is None:
        if dry_run:
            console.print(f"would register lab template {version} from {base}")
        else:
            console.print(f"[green]template {version}[/]: sha256 {done.record.sha256}, {done.record.size} bytes")
        return
    if dry_run:
        console.print(f"would run on {host}: {done.step.summary} into {done.step.inputs['vhd_path']}")
        return
    console.print(f"[green]template {version}[/] built on {host}: sha256 {done.record.sha256}")


@task(help={"release": "the release to point the label at",
            "label": "current, qa or recommended (current moves the old current to previous)",
            "group": "the release group whose label moves",
            "force": "promote even without a successful canary deploy in the group",
            "dry_run": "say what would move; change nothing"})
@reports_errors
def promote(c, release, label, group, force=False, dry_run=False):  # noqa: ANN001
    """Move a label to a release (refused without a successful canary in the group unless --force); commits."""
    with context() as ctx:
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
    with context() as ctx:
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
    with context() as ctx:
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


@task(help={"id": "the new release id, e.g. 2026C3.3 (year, cycle, patch)",
            "from": "the release it starts from (default for a patch: the newest release of its cycle)",
            "os_template": "the OS template version (default: the one of --from)",
            "settings_version": "the settings format (default: that of --from, else the templates')",
            "apps_source": "build the Apps image from this folder in the same run (its version.txt must say the id)",
            "notes": "a line about the release",
            "dry_run": "check everything and print the definition; write nothing"})
@reports_errors
def new_release(c, id, from_=None, os_template=None, settings_version=None, apps_source=None,  # noqa: A002, ANN001
                notes="", dry_run=False):
    """Write releases/<id>.yaml (validated), optionally build its Apps image, and commit it."""
    with context() as ctx:
        done = new_releases.new_release(ctx, id, parent=from_, os_template=os_template,
                                        settings_version=int(settings_version) if settings_version else None,
                                        apps_source=Path(apps_source) if apps_source else None, notes=notes,
                                        dry_run=dry_run)
    rel = done.release
    what = (f"{rel.id}: OS template {rel.os_template.name}, Apps {rel.apps.name} ({rel.apps.version}), settings "
            f"v{rel.settings_version}" + (f", from {done.parent}" if done.parent else ""))
    if dry_run:
        console.print(f"would write {done.path}: {what}")
        console.print("[dim]dry run: nothing was changed[/]")
        return
    console.print(f"[green]wrote[/] {done.path}: {what}")
    if done.built is not None:
        m = done.built.manifest
        console.print(f"[green]built[/] {rel.apps.name}: {len(m.files)} files, sha256 {m.image_sha256}")
    _commit_note(done.commit)
    console.print(f"next: `invoke publish --release={rel.id}`" if done.built else
                  f"next: `invoke build-apps --release={rel.id} --source=DIR`, then `invoke publish`")
