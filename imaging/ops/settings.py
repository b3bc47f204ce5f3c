"""Settings from git for review and rehearsal: render one instrument or all, migrate a settings branch,
rehearse the migrations of the fleet. The release each instrument's settings are for is the one
``facts.desired_release`` answers, as for every other operation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import InputError
from imaging.core.stamps import who
from imaging.model.inventory import Instrument
from imaging.ops.context import Context
from imaging.ops.facts import desired_releases
from imaging.settings import branches, migrations, samples
from imaging.settings.instruments import RenderResult, migrate_instrument, rehearse_fleet, render_many, write_rendered


def choose(ctx: Context, instrument: str | None, everything: bool) -> list[Instrument]:
    """Exactly one of ``--instrument`` or ``--all``."""
    if bool(instrument) == bool(everything):
        raise InputError("give exactly one of --instrument=NAME or --all", field="--instrument",
                         fix="name one instrument (ZOOM or NDXZOOM), or pass --all for the whole fleet")
    return [ctx.inventory.instrument(instrument)] if instrument else ctx.inventory.select()


@dataclass
class Rendered:
    results: list[RenderResult]
    written: dict[str, Path]  # instrument -> folder (empty for a check)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.rendered is None)


def render(ctx: Context, insts: list[Instrument], *, release: str | None = None, ref: str | None = None,
           allow_dirty: bool = False, out: Path | None = None, check: bool = False) -> Rendered:
    """Render each instrument's settings; write them under ``out`` (default: the state's rendered-settings
    folder) unless ``check``. A failure is that instrument's result, not the end of the run. Each renders from
    its release's templates (``settings_templates``), at ``ref`` when one is given."""
    releases = desired_releases(ctx, insts, release)
    results = render_many(ctx.paths.root, ctx.inventory, insts, releases, definitions=ctx.releases, ref=ref,
                          allow_dirty=allow_dirty)
    dest = out or ctx.paths.rendered_settings
    written = {}
    if not check:
        for res in results:
            if res.rendered is not None:
                write_rendered(res.rendered, dest / res.instrument)
                written[res.instrument] = dest / res.instrument
    return Rendered(results, written)


def target_version(target: int | None) -> int:
    return int(target) if target is not None else migrations.latest_version()


def rehearse(ctx: Context, insts: list[Instrument], *, target: int | None = None,
             ref: str | None = None) -> list[migrations.Rehearsal]:
    """Rehearse the migrations on throw-away copies; changes nothing."""
    return rehearse_fleet(ctx.paths.root, ctx.inventory, insts, desired_releases(ctx, insts), target_version(target),
                          definitions=ctx.releases, ref=ref)


def migrate(ctx: Context, inst: Instrument, *, target: int | None = None,
            dry_run: bool = False) -> migrations.BranchMigration | None:
    """Migrate the instrument's settings branch, one commit per step (None: no settings repository)."""
    return migrate_instrument(ctx.inventory, inst, target_version(target), dry_run=dry_run)


def restore(ctx: Context, inst: Instrument, commit: str) -> str:
    """Put the instrument's settings branch back to ``commit`` (the one before its migrations)."""
    if ctx.inventory.settings_repo is None:
        raise InputError("there is no settings repository to restore", field="--restore",
                         fix="without one, roll back the instrument itself (`invoke rollback`)")
    return migrations.restore_branch(ctx.inventory.settings_repo, inst.vm, commit)


def init_branches(ctx: Context, insts: list[Instrument], *, dry_run: bool = False) -> list[branches.Created | str]:
    """Make the settings branch of each instrument that has none, from the common line, ahead of its first
    deploy (which would otherwise make it). Returns what was made, or, in a dry run, the branches it would
    make."""
    repo = ctx.inventory.settings_repo
    if repo is None:
        raise InputError("no settings repository is configured: instruments render from the templates alone",
                         field="settings_repo", fix="set settings_repo in instruments/defaults.yaml")
    todo = branches.missing(repo, insts)
    if dry_run:
        return [i.vm for i in todo]
    return [c for i in todo if (c := branches.ensure_branch(repo, i, migrations.latest_version(), who=who()))]


def sample_repo(ctx: Context, dest: Path) -> Path:
    """Make the sample settings repository of the shipped fleet at ``dest`` (imaging.settings.samples)."""
    return samples.make_sample_repo(dest, ctx.inventory, ctx.paths.templates / "settings-history" / "v1")
