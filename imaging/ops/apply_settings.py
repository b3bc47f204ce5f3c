"""Settings-only updates of running instruments (`invoke apply-settings`), in waves like a deploy.

Each instrument's settings are rendered for the release it runs (its branch merged with the common line,
as for a deploy), checked for drift, compared with what its Settings volume holds, and the difference is
applied inside the running guest (``plans.settings``): only the services that read a changed file restart,
the VM never stops. The change is recorded in the journal (with what it replaced) and in the settings
ledger on Var; `invoke rollback` puts the replaced files back (``ops.rollback``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.core.stamps import new_op_id, stamp, who
from imaging.engine.executor import Listener, Outcome
from imaging.engine.runner import FleetResult, Options, ProgressFn
from imaging.engine.scheduler import Job, parse_batches, plan_waves
from imaging.model.inventory import Instrument
from imaging.model.plan import Plan
from imaging.ops.context import Context
from imaging.ops.deploy import dirty_settings
from imaging.ops.facts import health_now, observe, prepared, refuse_if_interrupted, running_release
from imaging.ops.hotfix import ALREADY, run_in_waves
from imaging.ops.reimage import deployed_settings, settings_for
from imaging.ops.sides import side_of
from imaging.plans.settings import SettingsChange, plan_apply_settings
from imaging.settings.drift import DriftFound

OWN = ".imaging/"  # imaging's own files on the volume (version, provenance): not a change by themselves


@dataclass
class Change:
    """One instrument's part of an apply-settings: its plan, or why there is nothing to do."""

    instrument: str
    release: str
    plan: Plan | None
    change: SettingsChange | None
    unread: tuple[str, ...] = ()  # changed files no service is named for (settings_services)

    @property
    def up_to_date(self) -> bool:
        return self.change is None


def change_for(ctx: Context, inst: Instrument, *, op_id: str, ref: str | None = None, dry_run: bool = True,
               allow_dirty: bool = False) -> Change:
    """Render the instrument's settings for the release it runs and work out what would change on its running
    guest. Refuses (InputError, nothing changed) what apply-settings cannot do safely."""
    refuse_if_interrupted(ctx, inst)
    release = running_release(ctx, inst)
    health = health_now(ctx, inst)
    if release is None or health is None:
        raise InputError(f"{inst.name} has no release recorded by this tool", field="--instruments",
                         value=inst.name, fix=f"deploy it first (`invoke reimage --instrument={inst.name}`)")
    if side_of(ctx, inst) == "legacy":
        raise InputError(f"{inst.name} runs its legacy side; its settings are the old system's",
                         field="--instruments", value=inst.name,
                         fix=f"switch back first: `invoke switch --instruments={inst.name} --to=current`")
    if (ready := prepared(ctx, inst)) is not None:
        raise InputError(f"{inst.name} has a prepared generation ({ready.release}, by {ready.op.id}) whose Settings "
                         "disk would not carry this change", field="--instruments", value=inst.name,
                         fix=f"switch to it first (`invoke switch --instruments={inst.name}`), then apply the settings")
    observed = observe(ctx, inst)
    if observed.power != "Running":
        raise InputError(f"{inst.name} is not running ({observed.power}); apply-settings changes running "
                         "instruments", field="--instruments", value=inst.name,
                         fix=f"start it, or reimage it: `invoke reimage --instrument={inst.name}`")
    deployed = deployed_settings(ctx, inst, observed)
    if deployed is None or not deployed.manifest.get("digest"):
        raise InputError(f"{inst.name}'s Settings volume has no manifest of what was deployed", field="--instruments",
                         value=inst.name, fix=f"reimage it (`invoke reimage --instrument={inst.name}`)")
    try:
        rs = settings_for(ctx, inst, release, observed, dry_run=dry_run, allow_dirty=allow_dirty, ref=ref)
    except DriftFound as exc:
        raise ImagingError(f"{inst.name}: its Settings volume was changed on the instrument, and applying new "
                           f"settings would overwrite that: {exc.report.render()}\nNothing was changed. Put those "
                           "changes into the templates or the instrument's settings branch, or keep them with "
                           f"`invoke reimage --instrument={inst.name} --capture-drift`") from None
    if rs.post_boot or rs.target_version != rs.deployed_version:
        raise InputError(f"{inst.name}'s settings are at format {rs.deployed_version}, its release {release} needs "
                         f"{rs.target_version}: a format change needs a reimage", field="--instruments",
                         value=inst.name, fix=f"`invoke reimage --instrument={inst.name}` migrates them")
    new = rs.rendered.files
    files = {rel: base64.b64encode(data).decode("ascii") for rel, data in sorted(new.items())
             if deployed.sha256(rel) != sha256_bytes(data)}
    remove = tuple(sorted(rel for rel in [*deployed.files, *deployed.hashed] if rel not in new))
    if all(rel.startswith(OWN) for rel in [*files, *remove]):
        return Change(inst.name, release, None, None)
    expected = {rel: sha256_bytes(data) for rel, data in new.items()}
    services, unread = inst.services_reading(sorted([*files, *remove]))  # imaging's own files restart nothing
    change = SettingsChange(
        inst=inst, host=ctx.inventory.host_of(inst), release=release, files=files, remove=remove,
        manifest={"files": expected, "digest": manifest_digest(expected)},
        digest_before=str(deployed.manifest["digest"]), services=tuple(services), health=health,
        commit=rs.rendered.provenance.get("commit"), op_id=op_id, owner=who(), stamp=stamp())
    plan = plan_apply_settings(change)
    if unread:
        plan.notes.append(f"no service is named for {', '.join(unread)} (settings_services in the inventory): "
                          "no program restarts for them; they take effect when read next")
    return Change(inst.name, release, plan, change, tuple(unread))


def apply_one(ctx: Context, name: str, *, ref: str | None = None, allow_dirty: bool = False,
              listener: Listener | None = None, batch: str | None = None) -> Outcome:
    """Apply the settings change of one instrument (worked out again now, under its lock)."""
    inst = ctx.inventory.instrument(name)
    op_id = new_op_id()
    found = change_for(ctx, inst, op_id=op_id, ref=ref, dry_run=False, allow_dirty=allow_dirty)
    if found.plan is None:
        return Outcome(op_id="", instrument=inst.name, ok=True, status=ALREADY)
    return ctx.executor(listener).execute(found.plan, op_id=op_id, batch=batch)


# --- many instruments --------------------------------------------------------------------------------


@dataclass
class SettingsRun:
    """An apply-settings over instruments, worked out before anything changed: each instrument's change (what
    the dry run prints) and the waves the run uses."""

    changes: list[Change]
    instruments: list[Instrument]
    waves: list[list[Job]]
    options: Options
    ref: str | None = None


def prepare_apply(ctx: Context, insts: list[Instrument], *, ref: str | None = None,
                  options: Options | None = None) -> SettingsRun:
    """Work out every instrument's change (refusing before anything changes) and the waves; changes nothing."""
    options = options or Options()
    if (dirty := dirty_settings(ctx, insts, options.allow_dirty)) is not None:
        raise dirty
    changes = [change_for(ctx, inst, op_id=new_op_id(), ref=ref, dry_run=True, allow_dirty=options.allow_dirty)
               for inst in insts]
    todo = [i for i, c in zip(insts, changes, strict=True) if not c.up_to_date]
    waves = plan_waves([Job(i.name, i.host) for i in todo], canary=options.canary,
                       batches=parse_batches(options.batches)) if todo else []
    return SettingsRun(changes, todo, waves, options, ref)


def run_apply(ctx: Context, run: SettingsRun, *, progress: ProgressFn | None = None) -> FleetResult:
    """Apply the settings in the planned waves; a failure on one instrument puts its files back."""
    def one(name: str, listener: Listener, batch: str) -> Outcome:
        return apply_one(ctx, name, ref=run.ref, allow_dirty=run.options.allow_dirty, listener=listener, batch=batch)

    def digest(inst: Instrument) -> str | None:  # what each instrument's Settings hold (the run's "before")
        whole = (health_now(ctx, inst) or {}).get("expect_settings_sha256")
        return f"settings {whole[:12]}" if whole else None

    return run_in_waves(ctx, "apply-settings", run.instruments, run.waves, run.options, one,
                        restored="its settings files were put back", already="its settings are up to date",
                        progress=progress, state_of=digest, ref=run.ref)
