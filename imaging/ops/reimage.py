"""Reimage one instrument: new OS and Apps disks from the release, fresh Settings, Var and Data kept.

Gathers what the plan needs (release, artifacts, what the host shows, settings), asks the planner for the
plan and hands it to the executor; afterwards retires old generations and re-applies the hotfixes the
instrument carries over (downward, through ``imaging.ops.hotfix``). Also: resume of an interrupted
operation.
"""

from __future__ import annotations

import base64
import json

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.core.stamps import new_op_id, stamp, who
from imaging.engine.executor import Listener, Outcome, StepEvent
from imaging.images.answer_files import render_instrument_answer
from imaging.model.inventory import Instrument
from imaging.model.plan import SETTINGS_MANIFEST, Observed, Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import (
    SETTINGS_INLINE_LIMIT,
    desired_release,
    hotfixes_to_reapply,
    interrupted,
    observe,
    plan_step,
    prepared,
    read_instrument_tree,
    refuse_dropped_hotfixes,
    refuse_if_interrupted,
    running_release,
    setter_op,
    unfinished,
    way_out,
)
from imaging.ops.hotfix import reapply_after_reimage
from imaging.ops.publish import publish
from imaging.ops.rollback import restore_settings_branch
from imaging.ops.sides import side_of
from imaging.ops.stage import UNBUILT, artifacts_of, stage_steps
from imaging.ops.survey import refuse_handmade
from imaging.plans.reimage import ReimageInputs, apps_expectation, plan_reimage
from imaging.settings import migrations
from imaging.settings.instruments import DeployedSettings, ReimageSettings, prepare_reimage_settings, templates_for
from imaging.state.journal import OK, RUNNING, Operation

# --- settings ------------------------------------------------------------------------------------


def deployed_settings(ctx: Context, inst: Instrument, observed: Observed) -> DeployedSettings | None:
    """What is on the instrument's Settings volume now (None before its first deployment): read inside the
    running guest, or from the disk when the VM is off (docs/settings.md)."""
    tree = read_instrument_tree(ctx, inst, observed, "settings", hash_over=SETTINGS_INLINE_LIMIT)
    if tree is None:
        return None
    files, hashed = tree
    raw = files.pop(SETTINGS_MANIFEST, None)
    manifest = json.loads(raw) if raw else {"files": {}}
    return DeployedSettings(manifest=manifest, files=files, hashed=hashed)


def settings_for(ctx: Context, inst: Instrument, release: str, observed: Observed, *, dry_run: bool,
                 capture_drift: bool = False, allow_dirty: bool = False, ref: str | None = None,
                 stamp_: str | None = None) -> ReimageSettings:
    """Drift check (refuses before any change), drift capture, migrations, render: see settings.instruments.
    Rendered from the release's own templates (``settings_templates``), at ``ref`` when one is given."""
    definition = ctx.releases[release]
    tref, tdir = templates_for(definition, ref)
    return prepare_reimage_settings(
        repo=ctx.paths.root, inventory=ctx.inventory, inst=inst, release=release,
        settings_version=definition.settings_version, deployed=deployed_settings(ctx, inst, observed),
        capture=capture_drift, dry_run=dry_run, allow_dirty=allow_dirty, ref=tref, templates_dir=tdir, stamp=stamp_)


# --- reimage -------------------------------------------------------------------------------------


def plan_for_reimage(ctx: Context, name: str, release: str | None = None, *, op_id: str | None = None,
                     allow_dirty: bool = False, dry_run: bool = True, capture_drift: bool = False,
                     settings_ref: str | None = None, hotfixes: tuple[str, ...] = ()) -> Plan:
    """Gather the inputs (reading only) and compute the plan for ``release`` (an id or a label; default the
    instrument's desired release). Touches nothing when ``dry_run``.

    Without ``dry_run`` the settings half may already act before the plan runs, and only in ways that
    lose nothing: captured drift is committed to the instrument's settings branch, and pending migrations
    are committed to it one step at a time (the branch's previous commit is kept for rollback).
    ``hotfixes`` are the ones the instrument will carry after the reimage (recorded on Var).
    """
    inst = ctx.inventory.instrument(name)
    return plan_phase(ctx, inst, desired_release(ctx, inst, release), op_id=op_id or new_op_id(),
                 allow_dirty=allow_dirty, dry_run=dry_run, capture_drift=capture_drift,
                 settings_ref=settings_ref, hotfixes=hotfixes)


def _apps_expectation(ctx: Context, apps: str, verify_content: bool) -> dict | None:
    """What the Apps volume must hold after the reimage, from the image's build manifest (None: none known)."""
    rec = ctx.builds.get("apps", apps)
    if rec is None or not rec.manifest or not rec.manifest.get("files"):
        return None
    return apps_expectation(rec.manifest["files"], verify_content=verify_content)


def plan_phase(ctx: Context, inst: Instrument, target: str, *, op_id: str, allow_dirty: bool, dry_run: bool,
          capture_drift: bool, settings_ref: str | None, hotfixes: tuple[str, ...], verify_content: bool = False,
          phase: str = "whole", generation: str | None = None, prepared_by: str | None = None,
          adopting: tuple[tuple[Step, ...], dict] | None = None) -> Plan:
    """The plan of one phase (``plans.reimage``): ``whole`` for a reimage, ``prepare`` or ``switch``.
    ``adopting`` (the adoption's steps and record) plans the new VM beside a hand-made one that those steps
    rename first: the plan then starts from no VM of that name."""
    host = ctx.inventory.host_of(inst)
    os_img, apps_img = artifacts_of(ctx, target, inst.host, build_samples=not dry_run)
    if adopting:
        observed = Observed(exists=False, power="Absent", disks={})
    else:
        if side_of(ctx, inst) == "legacy":
            raise ImagingError(f"{inst.name} runs its legacy side; its new VM is off and the Data disk is on the old "
                               f"one: switch back first with `invoke switch --instruments={inst.name} --to=current`")
        observed = observe(ctx, inst)
        refuse_handmade(ctx, inst, observed)
    when = stamp()
    rs = settings_for(ctx, inst, target, observed, dry_run=dry_run, capture_drift=capture_drift,
                      allow_dirty=allow_dirty, ref=settings_ref, stamp_=when)
    files = {rel: base64.b64encode(data).decode("ascii") for rel, data in sorted(rs.rendered.files.items())}
    digest = manifest_digest({rel: sha256_bytes(data) for rel, data in rs.rendered.files.items()})
    drift_files = ({rel: base64.b64encode(data).decode("ascii") for rel, data in rs.captured.var_files.items()}
                   if rs.captured else {})
    post_boot = []
    for pb in rs.post_boot:
        _, body = migrations.completion_record(pb, op_id=op_id, result={"exit_code": 0})
        post_boot.append({"migration": pb.migration, "description": pb.description, "command": pb.command,
                          "marker": pb.marker, "record": json.loads(body)})
    plan = plan_reimage(ReimageInputs(
        inst=inst, host=host, release=target, apps_version=ctx.releases[target].apps.version,
        os_template=os_img, apps_image=apps_img, settings_files=files, settings_digest=digest,
        settings_commit=rs.rendered.provenance.get("commit"), observed=observed, op_id=op_id, owner=who(),
        stamp=when, from_release=running_release(ctx, inst), hotfixes=hotfixes,
        migrations=tuple(rs.migration.steps) if rs.migration else (), settings_version=rs.target_version,
        settings_before_commit=rs.migration.before_commit if rs.migration else None, drift_files=drift_files,
        post_boot=tuple(post_boot), expect_apps=_apps_expectation(ctx, apps_img.name, verify_content),
        phase=phase, generation=generation, prepared_by=prepared_by,
        prepared_note=(note["note"] if prepared_by and (note := plan_step(ctx.journal.operation(prepared_by),
                                                                            "set_host_note")) else None),
        before=adopting[0] if adopting else (), adopted=adopting[1] if adopting else None,
        answer=render_instrument_answer(inst.vm, inst.identity, templates=ctx.paths.templates),
        based_on=(op.id if (op := setter_op(ctx, inst)) else None)))
    for art in (os_img, apps_img):
        if art.sha256 == UNBUILT:
            plan.notes.append(f"{art.name} is not built yet: it is built from the lab's sample tree on first use")
    return plan


def preview_reimage(ctx: Context, name: str, release: str | None = None, *, drop_hotfixes: tuple[str, ...] = (),
                    allow_dirty: bool = False, capture_drift: bool = False, settings_ref: str | None = None) -> Plan:
    """The dry run of ``reimage``: the same refusals (hotfixes it would lose), then the plan; changes nothing."""
    inst = ctx.inventory.instrument(name)
    target = desired_release(ctx, inst, release)
    refuse_dropped_hotfixes(ctx, inst, target, drop_hotfixes)
    return plan_phase(ctx, inst, target, op_id=new_op_id(), allow_dirty=allow_dirty, dry_run=True,
                 capture_drift=capture_drift, settings_ref=settings_ref, hotfixes=())


def reimage(ctx: Context, name: str, release: str | None = None, *, listener: Listener | None = None,
            batch: str | None = None, allow_dirty: bool = False, capture_drift: bool = False,
            settings_ref: str | None = None, drop_hotfixes: tuple[str, ...] = (), force: bool = False,
            verify_content: bool = False) -> Outcome:
    """Reimage one instrument to ``release`` (an id or a label; default its desired release)."""
    inst = ctx.inventory.instrument(name)
    return reimage_to(ctx, inst, desired_release(ctx, inst, release), listener=listener, batch=batch,
                      allow_dirty=allow_dirty, capture_drift=capture_drift, settings_ref=settings_ref,
                      drop_hotfixes=drop_hotfixes, force=force, verify_content=verify_content)


def refuse_same_release(ctx: Context, inst: Instrument, target: str, force: bool) -> None:
    """Reimaging to the release an instrument already runs replaces a working generation with a copy of
    itself: only on purpose (``--force``, e.g. to repair a damaged OS disk)."""
    if not force and running_release(ctx, inst) == target:
        raise InputError(f"{inst.name} already runs {target}; nothing was changed", field="--release", value=target,
                         fix=f"give --force to reimage it to {target} again (its previous generation is kept for "
                             "rollback), or choose another release")


def reimage_to(ctx: Context, inst: Instrument, target: str, *, listener: Listener | None = None,
               batch: str | None = None, allow_dirty: bool = False, capture_drift: bool = False,
               settings_ref: str | None = None, drop_hotfixes: tuple[str, ...] = (), force: bool = False,
               verify_content: bool = False) -> Outcome:
    """Reimage one instrument to an already resolved release. Hotfixes it carries that the target lacks
    stop it before anything changes (settings capture included), unless declared for the target (re-applied
    after the reimage) or dropped by the caller."""
    refuse_if_interrupted(ctx, inst)
    refuse_same_release(ctx, inst, target, force)
    refuse_dropped_hotfixes(ctx, inst, target, drop_hotfixes)
    carry = hotfixes_to_reapply(ctx, inst, target, drop_hotfixes)
    included = tuple(ctx.releases[target].includes_hotfixes)
    op_id = new_op_id()
    plan = plan_phase(ctx, inst, target, op_id=op_id, allow_dirty=allow_dirty, dry_run=False,
                 capture_drift=capture_drift, settings_ref=settings_ref, hotfixes=included + tuple(carry),
                 verify_content=verify_content)
    publish(ctx, target, inst.host)
    for s in stage_steps(ctx, target, inst.host):
        res = ctx.providers.run(s)  # idempotent: copies nothing when the images are already staged
        if listener and res.get("changed"):
            listener(StepEvent(inst.name, "stage", 0, 0, s, ok=True, result=res))
    outcome = ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)
    if outcome.ok:
        after_reimage(ctx, inst, outcome, carry, listener)
    elif outcome.restored:  # restored means git too: the migration commits of this reimage go
        restore_settings_branch(ctx, inst, op_id)
    return outcome


def after_reimage(ctx: Context, inst: Instrument, outcome: Outcome, carry: list[str],
                   listener: Listener | None) -> None:
    """Once a reimage finished: retire old generations, put carried hotfixes back on the new Apps disk."""
    retire_old_generations(ctx, inst)
    for hid, out in reapply_after_reimage(ctx, inst, carry, listener=listener, reimage_op=outcome.op_id).items():
        if not out.ok:
            outcome.error = f"reimaged, but re-applying hotfix {hid} failed: {out.error}"


def _carried_byplan_phase(ctx: Context, op: Operation) -> list[str]:
    """The hotfixes a reimage plan promised to carry (recorded in its write_record step, minus those the
    release already includes), so that a resumed reimage re-applies them too."""
    for d in op.plan:
        if d["action"] == "write_record":
            included = set(ctx.releases[op.to_release].includes_hotfixes) if op.to_release in ctx.releases else set()
            return sorted(h for h in d["inputs"]["record"].get("hotfixes", []) if h not in included)
    return []


def resume(ctx: Context, name: str, *, listener: Listener | None = None) -> Outcome:
    """Finish an interrupted operation from its first step not finished."""
    inst = ctx.inventory.instrument(name)
    op = interrupted(ctx, inst)
    if op is None:
        stuck = unfinished(ctx, inst)
        if stuck is not None:
            raise ImagingError(f"{inst.name}'s {stuck.kind} {stuck.id} failed and its undo did not finish; it cannot "
                               f"be resumed: {way_out(inst, stuck)}")
        raise ImagingError(f"{inst.name} has no interrupted operation to resume")
    outcome = ctx.executor(listener).resume(op.id)
    if outcome.ok and op.kind == "reimage":
        after_reimage(ctx, inst, outcome, _carried_byplan_phase(ctx, op), listener)
    return outcome


def retire_old_generations(ctx: Context, inst: Instrument) -> list[str]:
    """Keep the current and the previous generation of OS/Apps/Settings disks; delete older ones.

    Only generations made by reimages that finished are counted (failed, rolled-back and unfinished ones
    never are), and nothing attached, used by the rollback point of the last finished reimage or rollback,
    or touched by an unfinished operation is deleted (the provider refuses attached disks anyway).
    """
    made: list[tuple[str | None, dict[str, str]]] = []
    for op in ctx.journal.operations(instrument=inst.name):
        if op.status == OK and op.rollback_point and op.rollback_point.get("new") and op.kind == "reimage":
            made.append((op.to_release, op.rollback_point["new"]))
    gens = [g for _, g in made]
    current_disks = set(observe(ctx, inst).disks.values())
    keep = {p for g in gens[-2:] for p in g.values()} | current_disks
    # A reimage to the same release again must not push the real previous release out: the newest
    # generation of another release than the newest one is always kept.
    if made:
        other = [g for rel, g in made if rel != made[-1][0]]
        if other:
            keep |= set(other[-1].values())
    # What the last finished reimage or rollback would return to is the previous generation: keep it.
    for kind in ("reimage", "rollback"):
        last = ctx.journal.last(inst.name, kinds=(kind,), statuses=(OK,))
        if last and last.rollback_point:
            keep |= set(last.rollback_point.get("disks", {}).values())
    # A prepared generation is waiting for its switch: never retired.
    ready = prepared(ctx, inst)
    if ready is not None:
        keep |= set(ready.new.values())
    # An unfinished operation may still need what it started from.
    for op in ctx.journal.operations(instrument=inst.name):
        if op.status == RUNNING and op.rollback_point:
            keep |= set(op.rollback_point.get("disks", {}).values()) | set(op.rollback_point.get("new", {}).values())
    deleted = []
    for g in gens[:-2]:
        for role, path in g.items():
            if path not in keep:
                res = ctx.providers.run(Step("delete_disk", inst.host, {"path": path, "role": role},
                                             f"delete the retired {role} disk {path}"))
                if res.get("changed"):
                    deleted.append(path)
    return deleted
