"""An adopted instrument's two sides, one at a time: which runs, and `invoke switch --to=legacy|current`,
the one command a support person types. It refuses anything but a clean switch, and a failed switch is
undone to the side that ran.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from imaging.core.errors import InputError
from imaging.core.stamps import new_op_id, who
from imaging.engine.executor import Listener, Outcome
from imaging.model.inventory import Instrument
from imaging.model.plan import Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import health_now, refuse_if_interrupted
from imaging.plans.sides import SIDES, SideInputs, plan_retirement, plan_side_switch
from imaging.state.journal import OK


def adoption(ctx: Context, inst: Instrument) -> dict[str, Any] | None:
    """The adoption record of the instrument (legacy VM, its disks), or None: it has no legacy side (never
    adopted, its legacy side was retired, or it was unadopted)."""
    for op in reversed(ctx.journal.operations(instrument=inst.name)):
        if op.status == OK and op.kind in ("retire-legacy", "unadopt"):
            return None
        if op.status == OK and (op.rollback_point or {}).get("adopted"):
            return op.rollback_point["adopted"]
    return None


def current_since(ctx: Context, inst: Instrument) -> datetime | None:
    """When the current side last started running for good: the adoption, or the last switch back to it."""
    for op in reversed(ctx.journal.operations(instrument=inst.name)):
        if op.status != OK:
            continue
        rp = op.rollback_point or {}
        if (op.kind == "side" and rp.get("to") == "current") or rp.get("adopted"):
            return datetime.fromisoformat(op.ended or op.started)
        if op.kind == "side":
            return None  # the legacy side runs
    return None


def retirement_due(ctx: Context, inst: Instrument, today: date | None = None) -> bool:
    due = inst.adopt.retire_after
    return adoption(ctx, inst) is not None and due is not None and due <= (today or datetime.now(UTC).date())


def plan_for_retirement(ctx: Context, inst: Instrument, *, now: datetime | None = None,
                        op_id: str | None = None) -> Plan:
    """Refused unless the instrument has a legacy side, runs its current side, and has run it for
    ``adopt.retire_min_days`` without a switch back."""
    record = adoption(ctx, inst)
    if record is None:
        raise InputError(f"{inst.name} has no legacy side to retire", field="--instruments", value=inst.name,
                         fix="see `invoke status`")
    since = current_since(ctx, inst)
    if since is None:
        raise InputError(f"{inst.name} runs its legacy side; nothing was deleted", field="--instruments",
                         value=inst.name, fix=f"`invoke switch --instruments={inst.name} --to=current` first, then "
                                              f"let it run {inst.adopt.retire_min_days} days")
    days = ((now or datetime.now(UTC)) - since).total_seconds() / 86400
    if days < inst.adopt.retire_min_days:
        raise InputError(f"{inst.name} has run its current side for {days:.1f} days since {since:%Y-%m-%d %H:%M}; "
                         f"retirement needs {inst.adopt.retire_min_days} without a switch back; nothing was deleted",
                         file=inst.source, field="adopt.retire_min_days", value=inst.adopt.retire_min_days,
                         fix="wait, or lower adopt.retire_min_days in the instrument's file")
    refuse_if_interrupted(ctx, inst)
    return plan_retirement(inst, ctx.inventory.host_of(inst), record["legacy_vm"], list(record["legacy_disks"]),
                           op_id or new_op_id(), who())


def retire_legacy(ctx: Context, name: str, *, listener: Listener | None = None,
                  now: datetime | None = None) -> Outcome:
    inst = ctx.inventory.instrument(name)
    op_id = new_op_id()
    plan = plan_for_retirement(ctx, inst, now=now, op_id=op_id)
    return ctx.executor(listener).execute(plan, op_id=op_id)


def side_of(ctx: Context, inst: Instrument) -> str | None:
    """Which side runs: "legacy" or "current"; None for an instrument without a legacy side."""
    if adoption(ctx, inst) is None:
        return None
    last = ctx.journal.last(inst.name, kinds=("side",), statuses=(OK,))
    return (last.rollback_point or {}).get("to", "current") if last else "current"


def plan_for_side(ctx: Context, inst: Instrument, to: str, *, op_id: str | None = None) -> Plan:
    if to not in SIDES:
        raise InputError("unknown side", field="--to", value=to, fix="use --to=legacy or --to=current")
    record = adoption(ctx, inst)
    if record is None:
        raise InputError(f"{inst.name} has no legacy side (it was not adopted)", field="--to", value=to,
                         fix=f"see `invoke survey --instrument={inst.name}`; `invoke adopt` keeps a hand-made VM")
    now = side_of(ctx, inst)
    if now == to:
        raise InputError(f"{inst.name} already runs its {to} side; nothing was changed", field="--to", value=to,
                         fix=f"--to={'current' if to == 'legacy' else 'legacy'} switches to the other side")
    refuse_if_interrupted(ctx, inst)
    powers = {vm: ctx.providers.run(Step("get_state", inst.host, {"vm": vm}, f"look at {vm}")).get("power", "Absent")
              for vm in (inst.vm, record["legacy_vm"])}
    if "Absent" in powers.values():
        gone = [vm for vm, p in powers.items() if p == "Absent"]
        raise InputError(f"{', '.join(gone)} does not exist on {inst.host}; a switch needs both sides",
                         field="--instruments", value=inst.name, fix="see `invoke status`; nothing was changed")
    health = health_now(ctx, inst)
    return plan_side_switch(SideInputs(inst=inst, host=ctx.inventory.host_of(inst), to=to,
                                       legacy_vm=record["legacy_vm"], legacy_os_disk=record["legacy_disks"][0],
                                       powers=powers, health=health, op_id=op_id or new_op_id(), owner=who(),
                                       shared_folders=tuple(record.get("shared_folders", ()))))


def switch_side(ctx: Context, name: str, to: str, *, listener: Listener | None = None) -> Outcome:
    inst = ctx.inventory.instrument(name)
    op_id = new_op_id()
    plan = plan_for_side(ctx, inst, to, op_id=op_id)
    return ctx.executor(listener).execute(plan, op_id=op_id)
