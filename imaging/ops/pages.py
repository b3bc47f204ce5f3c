"""The report pages that are not a run's own: a --simulate drawn as the run it predicts, and the fleet as it
is now (`invoke report --fleet`). Written into the reports folder like every report (self-contained HTML)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from imaging.core.stamps import stamp
from imaging.engine.html_report import render_run, write_page
from imaging.engine.simulate import Prediction
from imaging.engine.timeline import simulated
from imaging.model.inventory import Instrument
from imaging.ops.context import Context


def simulation_page(ctx: Context, kind: str, subject: str, insts: list[Instrument], prediction: Prediction,
                    *, canary: bool = True) -> Path:
    """Draw a --simulate as its timeline (every bar the prediction) into ``simulate-<kind>-<stamp>.html``."""
    t = simulated(kind, subject, [list(w) for w in prediction.summary.waves], {i.name: i.host for i in insts},
                  prediction.trace, canary=canary)
    t.started = datetime.now(UTC).isoformat(timespec="seconds")
    return write_page(ctx.paths.reports / f"simulate-{kind}-{stamp()}.html", render_run(t))
