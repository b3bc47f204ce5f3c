"""Adopt a hand-made VM: keep it whole as the instrument's legacy side (stopped, renamed, its disks never
written), copy its data off its own disk into new Var and Data volumes, and make the new VM under the old name
as a reimage does. One operation in the journal: a failure anywhere undoes it all, and the old VM comes back
under its own name, running if it ran.
"""

from __future__ import annotations

from imaging.core.errors import InputError
from imaging.core.stamps import new_op_id, stamp, who
from imaging.engine.executor import Listener, Outcome
from imaging.model.plan import Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import desired_release, refuse_if_interrupted, setter_op
from imaging.ops.publish import publish
from imaging.ops.reimage import plan_phase
from imaging.ops.stage import stage_steps
from imaging.ops.survey import survey
from imaging.plans.adopt import AdoptInputs, UnadoptInputs, adoption_steps, check_fits, copies, plan_unadoption

LEGACY_SUFFIX = "-legacy"


def plan_adoption(ctx: Context, name: str, release: str | None = None, *, dry_run: bool = True,
                  op_id: str | None = None) -> Plan:
    """Survey the VM and plan its adoption; every refusal comes before anything is stopped."""
    inst = ctx.inventory.instrument(name)
    target = desired_release(ctx, inst, release)
    refuse_if_interrupted(ctx, inst)
    sv = survey(ctx, inst, write_report=not dry_run)
    where = f"`invoke survey --instrument={inst.name}`"
    if not sv.exists:
        raise InputError(f"{inst.vm} does not exist on {inst.host}: nothing to adopt", field="--instrument",
                         value=inst.name,
                         fix=f"a new instrument is created by `invoke reimage --instrument={inst.name}`")
    if sv.imaging_layout or setter_op(ctx, inst):
        raise InputError(f"{inst.vm} is already an imaging instrument (adopted, or made by a reimage)",
                         field="--instrument", value=inst.name, fix=f"see {where}; reimage or switch it instead")
    legacy = f"{inst.vm}{LEGACY_SUFFIX}"
    seen = ctx.providers.run(Step("get_state", inst.host, {"vm": legacy}, f"look for {legacy}"))
    if seen.get("exists"):
        raise InputError(f"a VM named {legacy} already exists on {inst.host}; adoption would rename {inst.vm} to it",
                         field="--instrument", value=inst.name, fix=f"rename or remove {legacy} on the host first")
    when = stamp()
    x = AdoptInputs(inst=inst, host=ctx.inventory.host_of(inst), survey=sv.to_dict(), legacy_name=legacy, stamp=when)
    check_fits(x)
    record = {"legacy_vm": legacy, "legacy_disks": [d["path"] for d in sv.disks], "survey": sv.report,
              "shared_folders": [c["from"] for c in copies(x).get("shared", [])]}
    plan = plan_phase(ctx, inst, target, op_id=op_id or new_op_id(), allow_dirty=False, dry_run=dry_run,
                      capture_drift=False, settings_ref=None, hotfixes=tuple(ctx.releases[target].includes_hotfixes),
                      adopting=(adoption_steps(x), record))
    plan.notes[:] = [n for n in plan.notes if "does not exist" not in n and "never copied" not in n]
    plan.notes.insert(0, f"adoption: {inst.vm} is kept whole as {legacy} (off; its disks are only read), and the "
                         f"new {inst.vm} is made from {target}; the survey is {sv.report or 'printed above'}")
    return plan


def adopt(ctx: Context, name: str, release: str | None = None, *, listener: Listener | None = None) -> Outcome:
    """Adopt the instrument's hand-made VM (see the module docstring)."""
    op_id = new_op_id()
    plan = plan_adoption(ctx, name, release, dry_run=False, op_id=op_id)
    inst = ctx.inventory.instrument(name)
    publish(ctx, plan.to_release, inst.host)
    for s in stage_steps(ctx, plan.to_release, inst.host):
        ctx.providers.run(s)
    return ctx.executor(listener).execute(plan, op_id=op_id)


def plan_for_unadoption(ctx: Context, name: str, *, op_id: str | None = None) -> Plan:
    """Refused unless the instrument was adopted, its legacy side is still there, and nothing is unfinished."""
    from imaging.ops.sides import adoption, side_of

    inst = ctx.inventory.instrument(name)
    record = adoption(ctx, inst)
    if record is None:
        raise InputError(f"{inst.name} has no legacy side to give the instrument back to (never adopted, "
                         "retired or unadopted already); nothing was changed", field="--instrument", value=inst.name,
                         fix="see `invoke status`")
    refuse_if_interrupted(ctx, inst)
    states = {vm: ctx.providers.run(Step("get_state", inst.host, {"vm": vm}, f"look at {vm}"))
              for vm in (inst.vm, record["legacy_vm"])}
    gone = [vm for vm, st in states.items() if not st.get("exists")]
    if gone:
        raise InputError(f"{', '.join(gone)} does not exist on {inst.host}; unadoption needs both sides",
                         field="--instrument", value=inst.name, fix="see `invoke status`; nothing was changed")
    new, old = states[inst.vm], states[record["legacy_vm"]]
    return plan_unadoption(UnadoptInputs(
        inst=inst, host=ctx.inventory.host_of(inst), legacy_vm=record["legacy_vm"],
        legacy_os_disk=record["legacy_disks"][0], shared_folders=tuple(record.get("shared_folders", ())),
        side=side_of(ctx, inst) or "current",
        powers={inst.vm: str(new.get("power")), record["legacy_vm"]: str(old.get("power"))},
        new_disks={int(d["slot"]): d["path"] for d in new.get("disks", [])},
        legacy_disks={int(d["slot"]): d["path"] for d in old.get("disks", [])},
        stamp=stamp(), op_id=op_id or new_op_id(), owner=who()))


def unadopt(ctx: Context, name: str, *, listener: Listener | None = None) -> Outcome:
    """Give the instrument back to its hand-made VM (see ``plans.adopt.plan_unadoption``)."""
    op_id = new_op_id()
    plan = plan_for_unadoption(ctx, name, op_id=op_id)
    return ctx.executor(listener).execute(plan, op_id=op_id)
