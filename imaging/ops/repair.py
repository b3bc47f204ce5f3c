"""Repair a damaged journal: keep the damaged file, keep every row that can be trusted, and rebuild the rows
that cannot from what the instruments' own records say.

The journal is history, so nothing is thrown away: a row that no record vouches for is kept with the
status ``damaged`` (it no longer counts as a finished change), and the damaged file stays beside the new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError
from imaging.core.stamps import stamp
from imaging.engine.executor import is_live
from imaging.ops.context import Context
from imaging.ops.facts import instrument_record
from imaging.state.journal import OK

DAMAGED = "damaged"


@dataclass
class JournalRepair:
    kept_as: Path | None  # the damaged file, kept beside the rebuilt journal (None: nothing was damaged)
    operations: int = 0
    rebuilt: list[str] = field(default_factory=list)  # "op id: how", rebuilt from an instrument's record
    marked: list[str] = field(default_factory=list)  # "op id: why", kept with status "damaged"
    steps_marked: int = 0
    unreadable: int = 0


def _records(ctx: Context) -> dict[str, tuple[str, dict[str, Any]]]:
    """operation id -> (instrument, record), for every instrument record the providers can read."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for inst in ctx.inventory.instruments.values():
        rec = instrument_record(ctx, inst) or {}
        for key in ("operation", "rollback_operation"):
            if isinstance(rec.get(key), str):
                out[rec[key]] = (inst.name, rec)
    return out


def _json_or(text: str | None, empty: str | None) -> str | None:
    """The column's JSON text when it parses, else ``empty`` (the damaged original stays in the kept file)."""
    try:
        json.loads(text or "")
    except ValueError:
        return empty
    return text


def repair_journal(ctx: Context, *, dry_run: bool = False) -> JournalRepair:
    busy = [i.name for i in ctx.inventory.instruments.values() if is_live(ctx.paths.locks, i.name)]
    if busy:
        raise ImagingError(f"operations are running on {', '.join(busy)}; repair the journal when they end")
    found = ctx.journal.salvage()
    bad_ops = [(r, why) for r, why in found.operations if why]
    bad_steps = [(r, why) for r, why in found.steps if why]
    report = JournalRepair(kept_as=None, operations=len(found.operations), unreadable=found.unreadable,
                           steps_marked=len(bad_steps))
    if not (bad_ops or bad_steps or found.unreadable):
        return report
    records = _records(ctx)
    ops = []
    for row, why in found.operations:
        row = dict(row)
        if why:
            row.update(plan=_json_or(row["plan"], "[]"), rollback_point=_json_or(row["rollback_point"], None))
            owner = records.get(row["id"])
            if owner is not None:
                name, rec = owner
                kind = "rollback" if rec.get("rollback_operation") == row["id"] else "reimage"
                if row["rollback_point"] is None:
                    row["rollback_point"] = json.dumps({"generation": rec.get("generation")})
                row.update(instrument=name, kind=kind, to_release=rec.get("release"), status=OK,
                           error=f"rebuilt from {name}'s record by repair-journal ({why})")
                report.rebuilt.append(f"{row['id']}: {kind} of {name} to {rec.get('release')}")
            else:
                row.update(status=DAMAGED, error=f"damaged row ({why}); the original is in the kept file")
                report.marked.append(f"{row['id']}: {why}")
        ops.append(row)
    steps = []
    for row, why in found.steps:
        row = dict(row)
        if why:
            row.update(status=DAMAGED, error=f"damaged row ({why})", result=_json_or(row["result"], None))
        steps.append(row)
    report.kept_as = ctx.paths.journal.with_name(f"{ctx.paths.journal.name}.damaged-{stamp()}")
    if not dry_run:
        ctx.journal.rebuild(ops, steps, keep_as=report.kept_as)
    return report
