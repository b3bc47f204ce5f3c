"""Adopt a hand-made VM: keep it whole as the instrument's legacy side (stopped, renamed, its disks never
written), copy its data off its own disk into new Var and Data volumes, and make the new VM under the old name
as a reimage does. One operation in the journal: a failure anywhere undoes it all, and the old VM comes back
under its own name, running if it ran.
"""

from __future__ import annotations

from imaging.core.errors import InputError
from imaging.core.stamps import new_op_id, stamp
from imaging.engine.executor import Listener, Outcome
from imaging.model.plan import Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import desired_release, refuse_if_interrupted, setter_op
from imaging.ops.publish import publish
from imaging.ops.reimage import plan_phase
from imaging.ops.stage import stage_steps
from imaging.ops.survey import survey
from imaging.plans.adopt import AdoptInputs, adoption_steps, check_fits

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
    record = {"legacy_vm": legacy, "legacy_disks": [d["path"] for d in sv.disks], "survey": sv.report}
    plan = plan_phase(ctx, inst, target, op_id=op_id or new_op_id(), allow_dirty=False, dry_run=dry_run,
                      capture_drift=False, settings_ref="HEAD", hotfixes=tuple(ctx.releases[target].includes_hotfixes),
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
