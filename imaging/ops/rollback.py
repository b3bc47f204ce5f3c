"""Rollback: undo an interrupted operation step by step, or else undo the last finished one (the previous
generation of disks for a reimage, a revert for a hotfix). One command for both, decided here."""

from __future__ import annotations

from dataclasses import dataclass

from imaging.core.errors import ImagingError
from imaging.core.stamps import new_op_id, who
from imaging.engine.executor import Listener, Outcome
from imaging.model.hotfixes import Hotfix
from imaging.model.inventory import SLOTS, Instrument
from imaging.model.plan import Plan
from imaging.ops.context import Context
from imaging.ops.facts import carried, last_operation, observe, plan_step, refuse_if_interrupted, unfinished
from imaging.ops.hotfix import hotfix_inputs
from imaging.plans.hotfix import plan_revert_hotfix
from imaging.plans.rollback import RollbackInputs, plan_rollback
from imaging.plans.settings import SettingsRestore, plan_restore_settings
from imaging.settings.instruments import rollback_settings
from imaging.state.journal import OK, Operation


def plan_for_rollback(ctx: Context, name: str, *, op_id: str | None = None) -> Plan:
    """The plan that undoes the last finished operation: a revert for a hotfix, the replaced files for a
    settings change, the previous disks for a reimage. Reads only."""
    inst = ctx.inventory.instrument(name)
    op_id = op_id or new_op_id()
    last = last_operation(ctx, inst)
    if last is None:
        raise ImagingError(f"{inst.name} has no finished operation to roll back")
    rp = last.rollback_point or {}
    if last.kind == "hotfix":
        hf = Hotfix.from_dict(rp["manifest"])
        return plan_revert_hotfix(hotfix_inputs(ctx, inst, hf, None, op_id))
    if last.kind == "apply-settings":  # the files it replaced come back from Var; the VM keeps running
        return plan_for_restore(ctx, inst, last.id, op_id=op_id)
    if last.kind != "reimage":
        raise ImagingError(f"the last operation on {inst.name} was a {last.kind} ({last.id}); there is no "
                           f"earlier generation to return to by rollback; reimage to go forward")
    prev = {int(k): v for k, v in (rp.get("disks") or {}).items() if int(k) in (SLOTS["os"], SLOTS["apps"],
                                                                                  SLOTS["settings"])}
    if SLOTS["os"] not in prev or SLOTS["apps"] not in prev:
        raise ImagingError(f"{inst.name} had no previous OS and Apps disks before {last.id}: nothing to return to")
    setter = None
    for op in ctx.journal.operations(instrument=inst.name, kind="reimage"):
        if op.status == OK and (op.rollback_point or {}).get("new", {}).get("os") == prev[SLOTS["os"]]:
            setter = op
    if setter is None:
        raise ImagingError(f"the previous disks of {inst.name} ({prev[SLOTS['os']]}) were not made by a recorded "
                           "reimage; roll back by hand")
    health = plan_step(setter, "health_check")
    record = plan_step(setter, "write_record")
    if health is not None:  # the Apps manifest check belongs to the reimage: hotfixes change Apps afterwards
        health = {k: v for k, v in health.items() if k != "expect_apps"}
    assert health is not None and record is not None
    state = carried(ctx, inst)
    prev_gen = setter.rollback_point["generation"]
    notes = [f"returns {inst.name} to {setter.to_release} (generation {prev_gen}), as before {last.id}",
             f"{last.to_release} will be marked bad for {inst.name}: nothing chooses it again by default"
             if last.to_release != setter.to_release else
             f"both generations run {last.to_release}: no release is marked bad",
             "Var and Data stay attached and untouched"]
    if state.by_generation.get(prev_gen):
        notes.append("hotfixes carried again: " + ", ".join(sorted(state.by_generation[prev_gen])))
    return plan_rollback(RollbackInputs(
        inst=inst, host=ctx.inventory.host_of(inst), observed=observe(ctx, inst), previous_disks=prev,
        previous_power=str(rp.get("power", "Running")), previous_release=setter.to_release or "",
        previous_generation=prev_gen, rolled_away=last.to_release or "", health=health,
        record={**record["record"], "hotfixes": sorted(state.by_generation.get(prev_gen, {}))},
        undone_op=last.id, op_id=op_id, owner=who(), notes=notes))


def plan_for_restore(ctx: Context, inst: Instrument, applied: str, *, op_id: str) -> Plan:
    """The rollback of a finished apply-settings (``applied``: its operation id), from its journal entry."""
    rp = ctx.journal.operation(applied).rollback_point or {}
    return plan_restore_settings(SettingsRestore(
        inst=inst, host=ctx.inventory.host_of(inst), release=str(rp["release"]), applied_op=applied,
        changed=tuple(rp.get("files", ())), services=tuple(rp.get("services", ())), health=dict(rp["health"]),
        digest_before=str(rp["digest_before"]), op_id=op_id, owner=who()))


def rollback_last(ctx: Context, name: str, *, listener: Listener | None = None) -> Outcome:
    """Undo the last finished operation; a release rolled away from is marked bad for the instrument."""
    inst = ctx.inventory.instrument(name)
    refuse_if_interrupted(ctx, inst)
    op_id = new_op_id()
    plan = plan_for_rollback(ctx, name, op_id=op_id)
    outcome = ctx.executor(listener).execute(plan, op_id=op_id)
    if outcome.ok and plan.kind == "rollback":
        if plan.from_release and plan.from_release != plan.to_release:  # back within one release: none is bad
            ctx.bad.mark(inst.name, plan.from_release, op_id=op_id, reason=f"rolled back by {who()}")
        restore_settings_branch(ctx, inst, plan.rollback_point.get("undoes"))
    return outcome


def restore_settings_branch(ctx: Context, inst: Instrument, undone_op: str | None) -> str | None:
    """The previous Settings disk is back (a rollback, or the undo of a failed or interrupted reimage); put
    the instrument's settings branch (if there is a settings repository) back to where it was before that
    reimage migrated it, so git and the disk agree."""
    if not undone_op:
        return None
    before = (ctx.journal.operation(undone_op).rollback_point or {}).get("settings_before_commit")
    return rollback_settings(ctx.inventory, inst, before)


@dataclass
class RollbackChoice:
    """What `invoke rollback` will do: finish undoing an interrupted operation, or undo the last one."""

    instrument: str
    interrupted: Operation | None  # interrupted, or failed with an undo that did not finish
    plan: Plan | None  # the plan that undoes the last finished operation (when nothing is interrupted)


def choose_rollback(ctx: Context, name: str) -> RollbackChoice:
    """Decide, reading only, which kind of rollback applies to the instrument."""
    inst = ctx.inventory.instrument(name)
    op = unfinished(ctx, inst)
    if op is not None:
        return RollbackChoice(inst.name, op, None)
    return RollbackChoice(inst.name, None, plan_for_rollback(ctx, inst.name))


def rollback(ctx: Context, choice: RollbackChoice, *, listener: Listener | None = None) -> Outcome:
    """Carry out a rollback chosen by ``choose_rollback``."""
    if choice.interrupted is not None:
        outcome = ctx.executor(listener).rollback_interrupted(choice.interrupted.id)
        if not outcome.restored:
            raise ImagingError(f"{choice.instrument}: some undo steps failed; see `invoke status` and the journal")
        if choice.interrupted.kind == "reimage":
            restore_settings_branch(ctx, ctx.inventory.instrument(choice.instrument), choice.interrupted.id)
        return outcome
    return rollback_last(ctx, choice.instrument, listener=listener)
