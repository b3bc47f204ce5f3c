"""Authoring a release: `invoke new-release` writes ``releases/<id>.yaml`` (validated like every other),
optionally builds its Apps image in the same run, and commits the file.

A patch release inherits from the release it patches (OS template, settings format, hotfixes it includes);
a new cycle inherits from ``--from`` when given. Nothing is left half-made: the file is written under a
temporary name, loaded back through the same validation as every release, and renamed into place only
when the build (if any) succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.core.git import CommitResult, commit_file
from imaging.images import build
from imaging.model.releases import ReleaseDefinition, ReleaseId, SettingsTemplates, load_release
from imaging.ops.context import Context
from imaging.settings.render import VERSION_FILE, parse_version


@dataclass
class NewRelease:
    release: ReleaseDefinition
    path: Path
    parent: str | None
    built: build.BuildResult | None
    commit: CommitResult | None


def templates_settings_version(ctx: Context) -> int:
    """The settings format the project's templates are at."""
    f = ctx.paths.templates / "settings" / VERSION_FILE
    return parse_version(f.read_bytes() if f.exists() else None, source=str(f))


def _templates(ctx: Context, version: int, have: int, base: ReleaseDefinition | None) -> SettingsTemplates | None:
    """What the new release renders its settings from: the commit the templates are at now when they are at
    its format (so it keeps rendering them after they move on), else what its parent renders, else a frozen
    set of that format. None: the project is not in git, so HEAD is all there is to name."""
    if version == have:
        root = ctx.paths.root
        if not gitrepo.is_repo(root):
            return None
        top = gitrepo.toplevel(root)
        folder = (ctx.paths.templates / "settings").resolve().relative_to(top.resolve()).as_posix()
        dirty = gitrepo.dirty_paths(top, [folder])
        if dirty:
            raise InputError(f"the settings templates have uncommitted changes: {', '.join(dirty[:5])}",
                             file=str(ctx.paths.templates / "settings"), field="--settings-version",
                             fix="commit them first: a release records the commit its settings templates are read at")
        return SettingsTemplates(ref=gitrepo.head_commit(top), dir=folder)
    if base is not None and base.settings_version == version:
        return base.settings_templates
    frozen = ctx.paths.templates / "settings-history" / f"v{version}"
    if (frozen / VERSION_FILE).is_file():
        return SettingsTemplates(dir=frozen.resolve().relative_to(ctx.paths.root.resolve()).as_posix())
    raise InputError(f"no settings templates at format {version} to render the release from",
                     field="--settings-version", value=version,
                     fix=f"use format {have} (the templates'), or --from a release made at format {version}")


def _parent(ctx: Context, rid: ReleaseId, parent: str | None) -> ReleaseDefinition | None:
    if parent is not None:
        if parent not in ctx.releases:
            raise InputError("no such release to start from", field="--from", value=parent,
                             fix=f"use one of {', '.join(sorted(ctx.releases))}")
        return ctx.releases[parent]
    if rid.patch > 0:  # a patch release patches the newest release of its cycle before it
        same = [r for r in ctx.releases.values()
                if (r.release_id.year, r.release_id.cycle) == (rid.year, rid.cycle) and r.release_id < rid]
        if not same:
            raise InputError(f"{rid} is a patch release, but no release of {rid.year}C{rid.cycle} exists to patch",
                             field="--id", value=str(rid), fix=f"create {rid.year}C{rid.cycle}.0 first, or give --from")
        return max(same, key=lambda r: r.release_id)
    return None


def plan_release(ctx: Context, release_id: str, *, parent: str | None = None, os_template: str | None = None,
                 settings_version: int | None = None, notes: str = "") -> tuple[ReleaseDefinition, str | None]:
    """The definition ``new-release`` would write, checked; changes nothing."""
    rid = ReleaseId.parse(release_id, field="--id")
    if str(rid) in ctx.releases:
        raise InputError("the release already exists", field="--id", value=str(rid),
                         fix="releases are immutable: choose the next patch number")
    base = _parent(ctx, rid, parent)
    if base is not None and not base.release_id < rid:
        raise InputError(f"{rid} does not sort after {base.id}, the release it comes from", field="--id",
                         value=str(rid), fix=f"choose an id newer than {base.id}")
    template = os_template or (base.os_template.name if base else None)
    if template is None:
        raise InputError("a new release needs an OS template", field="--os-template",
                         fix="give --os-template=NAME (e.g. win11-ltsc-2026.1) or --from=RELEASE")
    build.check_template_version(template, field="--os-template")
    have = templates_settings_version(ctx)
    version = settings_version if settings_version is not None else (base.settings_version if base else have)
    if not 1 <= int(version) <= have:
        raise InputError(f"the templates have settings formats 1 to {have}", field="--settings-version",
                         value=version, fix=f"choose a settings version from 1 to {have}")
    data = {"id": str(rid), "os_template": {"name": template},
            "apps": {"name": f"apps-{rid}", "version": str(rid)}, "settings_version": int(version),
            "includes_hotfixes": list(base.includes_hotfixes) if base else [],
            "settings_templates": (t.model_dump() if (t := _templates(ctx, int(version), have, base)) else None),
            "notes": notes or (f"Patch of {base.id}." if base and rid.patch else f"Release {rid}.")}
    return ReleaseDefinition.model_validate(data), base.id if base else None


def new_release(ctx: Context, release_id: str, *, parent: str | None = None, os_template: str | None = None,
                settings_version: int | None = None, apps_source: Path | None = None, notes: str = "",
                dry_run: bool = False) -> NewRelease:
    """Write, build (with ``apps_source``) and commit a new release; ``dry_run`` checks and writes nothing."""
    rel, base = plan_release(ctx, release_id, parent=parent, os_template=os_template,
                             settings_version=settings_version, notes=notes)
    path = ctx.paths.releases / f"{rel.id}.yaml"
    if apps_source is not None:
        build.check_apps_source(Path(apps_source), rel)
    if dry_run:
        return NewRelease(rel, path, base, None, None)
    header = f"# Release {rel.id}" + (f", from {base}" if base else "") + ". Written by `invoke new-release`.\n"
    body = yaml.safe_dump(rel.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    ctx.paths.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="new-release-", dir=ctx.paths.tmp) as tmp:
        draft = Path(tmp) / path.name  # the file name must equal the id, as load_release checks
        draft.write_text(header + body, encoding="utf-8")
        written = load_release(draft)
        built = None
        if apps_source is not None:
            releases = {**ctx.releases, rel.id: written}
            built = build.build_apps(store=ctx.store, records=ctx.builds, releases=releases, release=rel.id,
                                     source=Path(apps_source), workdir=ctx.paths.tmp)
        shutil.copyfile(draft, path.with_name(f".{path.name}.partial"))
        os.replace(path.with_name(f".{path.name}.partial"), path)
    ctx.releases[rel.id] = written
    commit = commit_file(ctx.paths.root, path, f"new release {rel.id}" + (f" from {base}" if base else ""))
    return NewRelease(written, path, base, built, commit)
