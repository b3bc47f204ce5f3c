"""The report pages that are not a run's own: a --simulate drawn as the run it predicts, and the fleet as it
is now (`invoke report --fleet`). Written into the reports folder like every report (self-contained HTML)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imaging.core.errors import ImagingError
from imaging.core.stamps import stamp
from imaging.engine.html_report import render_fleet, render_run, write_page
from imaging.engine.simulate import Prediction
from imaging.engine.timeline import simulated
from imaging.model.inventory import Instrument
from imaging.ops.context import Context
from imaging.ops.facts import observe
from imaging.ops.reimage import deployed_settings
from imaging.ops.status import InstrumentStatus, fleet_status
from imaging.settings.drift import detect_drift

HISTORY = 10  # operations per instrument in the fleet page's history strip


def simulation_page(ctx: Context, kind: str, subject: str, insts: list[Instrument], prediction: Prediction,
                    *, canary: bool = True) -> Path:
    """Draw a --simulate as its timeline (every bar the prediction) into ``simulate-<kind>-<stamp>.html``."""
    t = simulated(kind, subject, [list(w) for w in prediction.summary.waves], {i.name: i.host for i in insts},
                  prediction.trace, canary=canary)
    t.started = datetime.now(UTC).isoformat(timespec="seconds")
    return write_page(ctx.paths.reports / f"simulate-{kind}-{stamp()}.html", render_run(t))


@dataclass
class FleetRow:
    """One instrument on the fleet page."""

    status: InstrumentStatus
    labels: list[str]  # the labels its group gives the release it runs (current, previous, ...)
    drift: str  # "none", what changed on its Settings volume, or why it could not be read
    history: list[dict[str, str]]  # its last operations, oldest first: kind, status, when, release, id


def _drift(ctx: Context, inst: Instrument) -> str:
    try:
        observed = observe(ctx, inst)
        deployed = deployed_settings(ctx, inst, observed) if observed.exists else None
    except ImagingError as exc:
        return f"not read: {exc}"
    if deployed is None:
        return "-"
    report = detect_drift(deployed.manifest, deployed.files, current_hashes=deployed.hashed)
    return "none" if report.clean else ", ".join(f"{f.kind} {f.path}" for f in report.files)


def fleet_rows(ctx: Context, *, drift: bool = True, history: int = HISTORY) -> list[FleetRow]:
    rows = []
    for st in fleet_status(ctx):
        inst = ctx.inventory.instrument(st.instrument)
        labels = sorted(label for label, rid in (ctx.labels.get(inst.group) or {}).items() if rid == st.running)
        ops = ctx.journal.operations(instrument=inst.name)[-history:]
        rows.append(FleetRow(st, labels, _drift(ctx, inst) if drift else "not checked",
                             [{"kind": o.kind, "status": o.status, "when": o.started, "release": o.to_release or "",
                               "id": o.id} for o in ops]))
    return rows


def fleet_page(ctx: Context, *, drift: bool = True, out: Path | None = None) -> tuple[Path, list[FleetRow]]:
    """The fleet as it is now, as one self-contained page (``report-fleet-<stamp>.html`` by default)."""
    rows = fleet_rows(ctx, drift=drift)
    html = render_fleet(rows, when=datetime.now(UTC).isoformat(timespec="seconds"), drift_checked=drift)
    return write_page(out or ctx.paths.reports / f"report-fleet-{stamp()}.html", html), rows
