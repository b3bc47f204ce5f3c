"""Settings for instruments of the inventory: the variables a template sees, rendering and migrating many.

The tasks `render` and `migrate` (and the reimage) call these; they join the inventory to the pure
functions of :mod:`imaging.settings` and :mod:`imaging.migrations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gitrepo, migrations
from .errors import ImagingError, InputError
from .inventory import Instrument, Inventory
from .settings import RenderedSettings, render_settings

BUILTINS = ("instrument", "vm", "host", "group", "release")
# Every instrument's `variables:` must define these (the templates have no default for them).
REQUIRED_VARIABLES = ("technique", "target_station", "detector_banks", "motion_controllers",
                      "sample_environment", "db_host")


def instrument_variables(inst: Instrument, release: str) -> dict[str, Any]:
    """What the templates see: the instrument's variables plus the builtins (which always win)."""
    clash = sorted(set(inst.variables) & set(BUILTINS))
    if clash:
        raise InputError(f"{', '.join(clash)} are set by imaging and cannot be variables", file=inst.source,
                         field=f"variables.{clash[0]}", fix="remove them from variables:")
    return {**inst.variables, "instrument": inst.name, "vm": inst.vm, "host": inst.host, "group": inst.group,
            "release": release}


def release_name(inst: Instrument, inventory: Inventory, labels: dict[str, dict[str, str]],
                 override: str | None = None) -> str:
    """The release the instrument should run, with a label resolved through releases/labels.yaml."""
    name = override or inst.desired(inventory.groups)
    return labels.get(inst.group, {}).get(name, name)


@dataclass(frozen=True)
class RenderResult:
    instrument: str
    rendered: RenderedSettings | None
    error: str | None


def render_many(repo: Path, inventory: Inventory, instruments: Iterable[Instrument], releases: dict[str, str], *,
                ref: str = "HEAD", allow_dirty: bool = False) -> list[RenderResult]:
    """Render each instrument, collecting errors instead of stopping at the first (for --all --check)."""
    out = []
    for inst in instruments:
        try:
            r = render_settings(repo=repo, instrument=inst.name, vm=inst.vm,
                                variables=instrument_variables(inst, releases[inst.name]), ref=ref,
                                settings_repo=inventory.settings_repo, allow_dirty=allow_dirty)
            out.append(RenderResult(inst.name, r, None))
        except ImagingError as exc:
            out.append(RenderResult(inst.name, None, str(exc)))
    return out


def write_rendered(rendered: RenderedSettings, dest: Path) -> list[str]:
    """Write a rendered tree into ``dest`` for review (the folder then holds exactly these files)."""
    gitrepo.write_dir(dest, rendered.files)
    return sorted(rendered.files)


def rehearse_fleet(repo: Path, inventory: Inventory, instruments: Iterable[Instrument], releases: dict[str, str],
                   target: int, *, ref: str = "HEAD") -> list[migrations.Rehearsal]:
    """Rehearse the migrations of every instrument on throw-away copies; changes nothing anywhere.

    With a settings repository, each instrument's branch (named after its VM) is rehearsed. Without one,
    the instrument's settings come from the templates alone: they are rendered at ``ref`` and rehearsed,
    which proves they render and are at the target version.
    """
    chosen = list(instruments)
    if inventory.settings_repo is not None:
        by_vm = {i.vm: i.name for i in chosen}
        results = migrations.rehearse_branches(inventory.settings_repo, list(by_vm), target)
        return sorted((_renamed(r, f"{by_vm[r.name]} ({r.name})") for r in results), key=lambda r: r.name)
    out = []
    for res in render_many(repo, inventory, chosen, releases, ref=ref):
        if res.rendered is None:
            out.append(migrations.Rehearsal(name=res.instrument, ok=False, from_version=None, to_version=None,
                                            error=res.error))
        else:
            out.append(migrations.rehearse(res.instrument, res.rendered.files, target))
    return out


def _renamed(r: migrations.Rehearsal, name: str) -> migrations.Rehearsal:
    from dataclasses import replace

    return replace(r, name=name)


def migrate_instrument(inventory: Inventory, inst: Instrument, target: int, *,
                       dry_run: bool = False) -> migrations.BranchMigration | None:
    """Migrate the instrument's settings branch (None: no settings repository, nothing to migrate)."""
    if inventory.settings_repo is None:
        return None
    return migrations.migrate_branch(inventory.settings_repo, inst.vm, target, dry_run=dry_run)
