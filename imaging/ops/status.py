"""The fleet at a glance: what each instrument runs against what it should, and what is pending."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imaging.core.errors import ImagingError
from imaging.model.inventory import Instrument
from imaging.ops.context import Context
from imaging.ops.facts import (
    carried,
    desired_release,
    host_notes,
    observe,
    own_files,
    own_hotfixes,
    prepared,
    running_release,
    unfinished,
    way_out,
)
from imaging.ops.sides import retirement_due, side_of
from imaging.ops.survey import is_handmade
from imaging.state.journal import JournalDamaged

REPAIR = "`invoke repair-journal`"


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
    recorded: str | None = None  # the release the instrument's own record names (None: none, or unreadable)
    prepared: str | None = None  # the release (and generation) prepared beside the running one, if any
    side: str | None = None  # an adopted instrument's running side: "current" or "legacy" (None: no legacy side)
    hotfixes: tuple[str, ...] = ()  # on the running Apps generation: the journal's and the instrument's own ledger
    locked_by: str | None = None  # the operation holding the instrument's lock on its host, and whose
    seen_from: str = "journal"  # "journal", or "instrument" when this machine's journal has no history of it

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fleet_status(ctx: Context, names: list[str] | None = None) -> list[InstrumentStatus]:
    """One row per instrument. The journal and the instrument's own record are both read and compared: a
    damaged journal row, a damaged record or a disagreement is shown with its way out, never hidden."""
    return [_status(ctx, inst) for inst in ctx.inventory.select(names=names)]


def _status(ctx: Context, inst: Instrument) -> InstrumentStatus:
    observed = None
    try:
        observed = observe(ctx, inst)
        power = observed.power
    except ImagingError as exc:
        power = f"unreachable ({exc})"
    try:
        desired: str | None = desired_release(ctx, inst)
    except ImagingError:
        desired = None
    own, ledger = own_files(ctx, inst, observed) if observed is not None else (None, None)
    record = own or {}
    recorded = record.get("release") if isinstance(record.get("release"), str) else None
    notes = host_notes(ctx, inst)
    lock = notes["lock"]
    base = dict(instrument=inst.name, host=inst.host, vm=inst.vm, power=power, desired=desired, recorded=recorded,
                locked_by=f"{lock.get('op_id')} ({lock.get('owner')}, since {lock.get('since')})" if lock else None)
    try:
        running = running_release(ctx, inst)
        last = ctx.journal.last(inst.name)
        damaged = ctx.journal.damaged(inst.name)
        stuck = unfinished(ctx, inst)
        ready = prepared(ctx, inst)
        side = side_of(ctx, inst)
    except JournalDamaged as exc:  # pages SQLite cannot read: every instrument still gets its row
        return InstrumentStatus(**base, running=None, last_operation=None, last_result=None, last_when=None,
                                pending=f"the journal cannot be read ({exc.detail})", hint=REPAIR, prepared=None)
    seen = dict(running=running, side=side, prepared=f"{ready.release} ({ready.generation})" if ready else None,
                last_operation=last.kind if last else None,
                last_result=last.status if last else None, last_when=last.ended or last.started if last else None,
                hotfixes=tuple(sorted(set(carried(ctx, inst).hotfixes) | set(own_hotfixes(own, ledger)))))
    # One truth for every operator: what this machine's journal does not know, the host and the instrument do
    if last is None and recorded and not record.get("damaged"):
        seen |= dict(running=recorded, last_operation=record.get("kind", "reimage"), last_result="ok",
                     last_when=record.get("when"), seen_from="instrument")
        running = recorded
    if ready is None and notes["prepared"]:
        seen["prepared"] = f"{notes['prepared'].get('release')} ({notes['prepared'].get('generation')})"
    pending, hint = "", ""
    if damaged:
        pending = f"the journal's row of {damaged[-1].kind} {damaged[-1].id} is damaged ({damaged[-1].damaged})"
        hint = REPAIR
    elif stuck:
        pending = (f"interrupted {stuck.kind} {stuck.id}" if stuck.status == "running" else
                   f"{stuck.kind} {stuck.id} failed and was not fully undone; locked")
        hint = way_out(inst, stuck)
    elif last and last.status == "running":
        pending = f"{last.kind} in progress"
    elif lock and not _known(ctx, str(lock.get("op_id"))):
        pending = (f"locked on {inst.host} by operation {lock.get('op_id')} of {lock.get('owner')} since "
                   f"{lock.get('since')}, which this machine's journal does not know")
        hint = f"ask {lock.get('owner')}: it is finished with `invoke resume` or `invoke rollback` where it ran"
    elif observed is not None and is_handmade(ctx, inst, observed):
        pending = "hand-made VM: adopt it (a reimage is refused)"
        hint = f"`invoke survey --instrument={inst.name}`, then `invoke adopt --instrument={inst.name}`"
    elif side == "legacy":
        pending = "the old VM runs (legacy side)"
        hint = f"`invoke switch --instruments={inst.name} --to=current`"
    elif retirement_due(ctx, inst):
        pending = f"its legacy side is due for retirement (retire_after {inst.adopt.retire_after})"
        hint = f"`invoke retire-legacy --instruments={inst.name}`"
    elif record.get("damaged"):
        pending = f"its own record is damaged ({record['damaged']})"
        hint = f"`invoke reimage --instrument={inst.name} --force` (the damaged record is kept beside the new one)"
    elif recorded and running and recorded != running:
        pending = f"the journal says it runs {running}, its own record says {recorded}"
        hint = f"`invoke reimage --instrument={inst.name} --release={desired or running} --force`"
    elif desired is None:
        pending = "desired release cannot be resolved (see `invoke validate`)"
    elif running != desired and seen["prepared"] and str(seen["prepared"]).split(" ")[0] == desired:
        pending = f"switch to the prepared {desired}"
        hint = f"`invoke switch --instruments={inst.name}`"
    elif running != desired:
        pending = f"reimage to {desired}"
    return InstrumentStatus(**base, **seen, pending=pending, hint=hint)


def _known(ctx: Context, op_id: str) -> bool:
    try:
        ctx.journal.operation(op_id)
        return True
    except KeyError:
        return False


def trust_lines(ctx: Context, names: list[str] | None = None) -> list[str]:
    """For each host of the selection reached over the network: what validates its certificate."""
    hosts = sorted({i.host for i in ctx.inventory.select(names=names)})
    return [f"{h}: TLS trust: {said}" for h in hosts if (said := ctx.providers.trust(h))]


def journal_problems(ctx: Context) -> list[str]:
    """Damaged journal rows that belong to no instrument of the inventory (their instrument field is what
    was damaged), and a journal SQLite cannot read: fleet-wide lines for `invoke status`."""
    try:
        damaged = ctx.journal.damaged()
    except JournalDamaged as exc:
        return [str(exc)]
    known = set(ctx.inventory.instruments)
    return [f"the journal's row of {o.kind} {o.id} (instrument {o.instrument!r}) is damaged ({o.damaged}); "
            f"run {REPAIR}" for o in damaged if o.instrument not in known]


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
