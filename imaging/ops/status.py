"""The fleet at a glance: what each instrument runs against what it should, and what is pending."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imaging.core.errors import ImagingError
from imaging.ops.context import Context
from imaging.ops.facts import desired_release, observe, running_release, unfinished, way_out


@dataclass(frozen=True)
class InstrumentStatus:
    instrument: str
    host: str
    vm: str
    power: str
    running: str | None
    desired: str | None
    last_operation: str | None
    last_result: str | None
    last_when: str | None
    pending: str
    hint: str = ""  # the command that resolves the pending work, when there is one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fleet_status(ctx: Context, names: list[str] | None = None) -> list[InstrumentStatus]:
    rows = []
    for inst in ctx.inventory.select(names=names):
        try:
            power = observe(ctx, inst).power
        except ImagingError as exc:
            power = f"unreachable ({exc})"
        try:
            desired: str | None = desired_release(ctx, inst)
        except ImagingError:
            desired = None
        running = running_release(ctx, inst)
        last = ctx.journal.last(inst.name)
        stuck = unfinished(ctx, inst)
        hint = ""
        if stuck:
            pending = (f"interrupted {stuck.kind} {stuck.id}" if stuck.status == "running" else
                       f"{stuck.kind} {stuck.id} failed and was not fully undone; locked")
            hint = way_out(inst, stuck)
        elif last and last.status == "running":
            pending = f"{last.kind} in progress"
        elif desired is None:
            pending = "desired release cannot be resolved (see `invoke validate`)"
        elif running != desired:
            pending = f"reimage to {desired}"
        else:
            pending = ""
        rows.append(InstrumentStatus(
            instrument=inst.name, host=inst.host, vm=inst.vm, power=power, running=running, desired=desired,
            last_operation=last.kind if last else None, last_result=last.status if last else None,
            last_when=last.ended or last.started if last else None, pending=pending, hint=hint))
    return rows


@dataclass(frozen=True)
class Validation:
    instruments: int
    hosts: int
    groups: int
    releases: int


def validate(ctx: Context) -> Validation:
    """The inventory, releases and labels loaded (validated by ``Context.load``), and every instrument's
    desired release resolved; raises the first problem."""
    for inst in ctx.inventory.instruments.values():
        desired_release(ctx, inst)
    return Validation(len(ctx.inventory.instruments), len(ctx.inventory.hosts), len(ctx.inventory.groups),
                      len(ctx.releases))
