"""Settings for instruments of the inventory: the variables a template sees, rendering and migrating many.

The tasks `render` and `migrate` (and the reimage) call these; they join the inventory to the pure
functions of :mod:`imaging.settings.render` and :mod:`imaging.settings.migrations`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imaging.core import git as gitrepo
from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_bytes
from imaging.core.stamps import who
from imaging.model.inventory import DEFAULTS_FILE, Instrument, Inventory
from imaging.model.releases import DEFAULT_TEMPLATES_DIR, ReleaseDefinition, SettingsTemplates
from imaging.settings import branches, migrations
from imaging.settings.drift import DriftCapture, DriftFound, DriftReport, capture_drift, detect_drift
from imaging.settings.render import (
    PROVENANCE_FILE,
    VERSION_FILE,
    RenderedSettings,
    parse_version,
    render_settings,
    rerender_from_provenance,
)

BUILTINS = ("instrument", "vm", "host", "group", "release")
# Every instrument's `variables:` must define these (the templates have no default for them).
REQUIRED_VARIABLES = ("technique", "target_station", "detector_banks", "motion_controllers",
                      "sample_environment", "db_host")


def variables_dirty(inventory: Inventory, inst: Instrument) -> list[str]:
    """The inventory files the instrument's variables come from (its own file, defaults.yaml) that differ
    from git's HEAD: settings rendered from them are not what any commit holds."""
    root = Path(inventory.root)
    if not gitrepo.is_repo(root):
        return []
    top = gitrepo.toplevel(root)
    files = [Path(inst.source), root / DEFAULTS_FILE]
    rels = [os.path.relpath(f, top) for f in files if str(f) and f.exists()]
    return gitrepo.dirty_paths(top, rels) if rels else []


def instrument_variables(inst: Instrument, release: str) -> dict[str, Any]:
    """What the templates see: the instrument's variables plus the builtins (which always win)."""
    clash = sorted(set(inst.variables) & set(BUILTINS))
    if clash:
        raise InputError(f"{', '.join(clash)} are set by imaging and cannot be variables", file=inst.source,
                         field=f"variables.{clash[0]}", fix="remove them from variables:")
    return {**inst.variables, "instrument": inst.name, "vm": inst.vm, "host": inst.host, "group": inst.group,
            "release": release}


@dataclass(frozen=True)
class RenderResult:
    instrument: str
    rendered: RenderedSettings | None
    error: str | None
    no_branch: bool = False  # no settings branch yet: rendered from the common line


def templates_for(definition: ReleaseDefinition | None, ref: str | None = None) -> tuple[str, str]:
    """The (git ref, folder) a release's settings are rendered from; ``ref`` (a --settings-ref) overrides the
    release's ref, never its folder."""
    src = definition.templates if definition is not None else SettingsTemplates()
    return (ref or src.ref), src.dir


def render_many(repo: Path, inventory: Inventory, instruments: Iterable[Instrument], releases: dict[str, str], *,
                definitions: Mapping[str, ReleaseDefinition] | None = None, ref: str | None = None,
                allow_dirty: bool = False) -> list[RenderResult]:
    """Render each instrument for its release (``releases``: instrument -> release id), from that release's
    templates (``definitions``: release id -> definition; without one, the templates at ``ref`` or HEAD),
    collecting errors instead of stopping at the first (for --all --check)."""
    out = []
    repo_s = inventory.settings_repo
    for inst in instruments:
        try:
            definition = (definitions or {}).get(releases[inst.name])
            target = definition.settings_version if definition is not None else migrations.latest_version()
            tref, tdir = templates_for(definition, ref)
            overlay = None
            no_branch = repo_s is not None and not gitrepo.branch_exists(repo_s, inst.vm)
            if no_branch:  # renders from the common line until its first deploy makes its branch
                overlay, _ = migrations.migrate_files(branches.common_files(repo_s, target), target)
            elif repo_s is not None:
                own = gitrepo.read_tree(repo_s, f"refs/heads/{inst.vm}")
                if parse_version(own.get(VERSION_FILE), source=f"{repo_s}@{inst.vm}") < target:
                    overlay, _ = migrations.migrate_files(own, target)  # its deploy migrates it first
                else:  # with the common line merged in, as its next deploy will
                    merge = branches.merge_common(repo_s, inst)
                    branches.refuse_conflicts(inst, merge, repo_s)
                    overlay = branches.merged_files(repo_s, merge) if merge.needed else None
            r = render_settings(repo=repo, instrument=inst.name, vm=inst.vm,
                                variables=instrument_variables(inst, releases[inst.name]), ref=tref,
                                templates_dir=tdir, settings_repo=repo_s, allow_dirty=allow_dirty, overlay=overlay,
                                variables_dirty=variables_dirty(inventory, inst))
            out.append(RenderResult(inst.name, r, None, no_branch=no_branch))
        except ImagingError as exc:
            out.append(RenderResult(inst.name, None, str(exc)))
    return out


def write_rendered(rendered: RenderedSettings, dest: Path) -> list[str]:
    """Write a rendered tree into ``dest`` for review (the folder then holds exactly these files)."""
    gitrepo.write_dir(dest, rendered.files)
    return sorted(rendered.files)


def rehearse_fleet(repo: Path, inventory: Inventory, instruments: Iterable[Instrument], releases: dict[str, str],
                   target: int, *, definitions: Mapping[str, ReleaseDefinition] | None = None,
                   ref: str | None = None) -> list[migrations.Rehearsal]:
    """Rehearse the migrations of every instrument on throw-away copies; changes nothing anywhere.

    With a settings repository, each instrument's branch (named after its VM) is rehearsed. Without one,
    the instrument's settings come from the templates alone: they are rendered at ``ref`` and rehearsed,
    which proves they render and are at the target version.
    """
    chosen = list(instruments)
    if inventory.settings_repo is not None:
        srepo = inventory.settings_repo
        by_vm = {i.vm: i.name for i in chosen}
        # an instrument without a branch yet starts from the common line at its first deploy: rehearse that
        results = [migrations.rehearse(vm, branches.common_files(srepo, target), target)
                   if not gitrepo.branch_exists(srepo, vm) else r
                   for vm in sorted(by_vm) for r in migrations.rehearse_branches(srepo, [vm], target)]
        return sorted((_renamed(r, f"{by_vm[r.name]} ({r.name})") for r in results), key=lambda r: r.name)
    out = []
    for res in render_many(repo, inventory, chosen, releases, definitions=definitions, ref=ref):
        if res.rendered is None:
            out.append(migrations.Rehearsal(name=res.instrument, ok=False, from_version=None, to_version=None,
                                            error=res.error))
        else:
            out.append(migrations.rehearse(res.instrument, res.rendered.files, target))
    return out


def _renamed(r: migrations.Rehearsal, name: str) -> migrations.Rehearsal:
    return replace(r, name=name)


def migrate_instrument(inventory: Inventory, inst: Instrument, target: int, *,
                       dry_run: bool = False) -> migrations.BranchMigration | None:
    """Migrate the instrument's settings branch (None: no settings repository, nothing to migrate)."""
    if inventory.settings_repo is None:
        return None
    return migrations.migrate_branch(inventory.settings_repo, inst.vm, target, dry_run=dry_run)


# --- what a reimage does with settings ---------------------------------------------------------------


@dataclass(frozen=True)
class DeployedSettings:
    """What the provider read from the instrument's current Settings volume (before it is replaced)."""

    manifest: dict[str, Any]  # the volume's .imaging/manifest.json
    files: dict[str, bytes]  # every file on the volume (posix relpaths), but the large ones
    hashed: dict[str, str] = field(default_factory=dict)  # the large ones: relpath -> sha256 (not read)

    def sha256(self, rel: str) -> str | None:
        """A file's sha256 as it is on the volume now (None: not there)."""
        if rel in self.files:
            return sha256_bytes(self.files[rel])
        return self.hashed.get(rel)

    @property
    def version(self) -> int | None:
        raw = self.files.get(VERSION_FILE)
        return parse_version(raw, source="the Settings volume") if raw is not None else None

    @property
    def provenance(self) -> dict[str, Any] | None:
        raw = self.files.get(PROVENANCE_FILE)
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:
            return None


@dataclass(frozen=True)
class ReimageSettings:
    """Everything the reimage needs about settings, gathered before its plan is made."""

    rendered: RenderedSettings  # what write_settings writes (files) and health_check expects (sha256)
    drift: DriftReport | None  # None on a first deployment
    captured: DriftCapture | None  # drift saved: a branch commit, or var_files the provider writes to Var first
    migration: migrations.BranchMigration | None  # steps run on the settings branch (before_commit: rollback)
    post_boot: list[migrations.PostBootStep]  # run in the guest after wait_guest; markers go on Var
    deployed_version: int | None
    target_version: int
    created: branches.Created | None = None  # the instrument's settings branch, made for this deploy


def prepare_reimage_settings(*, repo: Path, inventory: Inventory, inst: Instrument, release: str,
                             settings_version: int | None, deployed: DeployedSettings | None,
                             capture: bool = False, dry_run: bool = False, allow_dirty: bool = False,
                             ref: str = "HEAD", templates_dir: str = DEFAULT_TEMPLATES_DIR,
                             post_boot_done: Iterable[str] = (), stamp: str | None = None) -> ReimageSettings:
    """Drift check, drift capture, migrations, render: the settings half of a reimage, in that order.

    Raises DriftFound (nothing changed) if the volume was edited and ``capture`` is off. With ``dry_run``
    nothing is committed: migrations run in memory and the render uses their result.
    ``settings_version`` is the version the release needs (None: the newest the migrations reach).
    """
    target = settings_version if settings_version is not None else migrations.latest_version()
    report = captured = None
    deployed_version = deployed.version if deployed else None
    if deployed is not None:
        before = None
        if deployed.provenance:
            before = rerender_from_provenance(repo, deployed.provenance, inventory.settings_repo)
        report = detect_drift(deployed.manifest, deployed.files, deployed_files=before, current_hashes=deployed.hashed)
        if not report.clean:
            if not capture:
                raise DriftFound(inst.name, report)
            if deployed_version is None:
                raise InputError("the Settings volume has no version file, so its drift cannot be filed",
                                 field=VERSION_FILE, fix="copy the changed files off the volume by hand")
            if not dry_run:
                captured = capture_drift(report, deployed.files, instrument=inst.name, vm=inst.vm,
                                         settings_repo=inventory.settings_repo, deployed_version=deployed_version,
                                         stamp=stamp)
    migration = None
    overlay = None
    created = None
    if inventory.settings_repo is not None:
        srepo = inventory.settings_repo
        if dry_run and not gitrepo.branch_exists(srepo, inst.vm):
            # no branch yet: its first deploy makes one from the common line; a dry run renders from that
            overlay, _ = migrations.migrate_files(branches.common_files(srepo, target), target)
        else:
            if not dry_run:
                created = branches.ensure_branch(srepo, inst, target, who=who())
            migration = migrations.migrate_branch(srepo, inst.vm, target, dry_run=dry_run)
            if dry_run and migration.steps:
                overlay, _ = migrations.migrate_files(gitrepo.read_tree(srepo, f"refs/heads/{inst.vm}"), target)
            else:  # the common line's changes since the branch left it come in (conflicts refuse the deploy)
                merge = branches.merge_common(srepo, inst)
                branches.refuse_conflicts(inst, merge, srepo)
                if merge.needed and dry_run:
                    overlay = branches.merged_files(srepo, merge)
                elif merge.needed:
                    branches.commit_merge(srepo, inst, merge, who=who())
    rendered = render_settings(repo=repo, instrument=inst.name, vm=inst.vm,
                               variables=instrument_variables(inst, release), ref=ref, templates_dir=templates_dir,
                               settings_repo=inventory.settings_repo, allow_dirty=allow_dirty, overlay=overlay,
                               variables_dirty=variables_dirty(inventory, inst))
    if rendered.version != target:
        raise InputError(f"release {release} needs settings version {target}, but the templates in {templates_dir} "
                         f"at {ref} are at version {rendered.version}", field="settings_version", value=target,
                         fix=f"name the templates the release was made with under settings_templates: in "
                             f"releases/{release}.yaml (docs/releases.md), or render from that git ref")
    steps = []
    if deployed_version is not None and deployed_version < target:
        steps = migrations.post_boot_steps(deployed_version, target, rendered.files, set(post_boot_done))
    return ReimageSettings(rendered=rendered, drift=report, captured=captured, migration=migration,
                           post_boot=steps, deployed_version=deployed_version, target_version=target,
                           created=created)


def rollback_settings(inventory: Inventory, inst: Instrument, before_commit: str | None) -> str | None:
    """Restore the instrument's settings branch as it was before a reimage's migrations (None: nothing to do).

    The Settings volume itself is restored by the reimage's undo (the old disk is kept until it succeeds).
    """
    if inventory.settings_repo is None or not before_commit:
        return None
    def tree(ref: str) -> str:
        return gitrepo.run_git(inventory.settings_repo, "rev-parse", f"{ref}^{{tree}}").decode().strip()

    if tree(f"refs/heads/{inst.vm}") == tree(gitrepo.resolve_commit(inventory.settings_repo, before_commit)):
        return None  # already as it was (a rollback run twice)
    return migrations.restore_branch(inventory.settings_repo, inst.vm, before_commit)
