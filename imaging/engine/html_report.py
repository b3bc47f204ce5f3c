"""The HTML report of a fleet run (and the live board while it runs): one self-contained page, no script,
no network: the timeline drawn as inline SVG on the server side, the recap, failures with their way out,
hotfixes carried or dropped, per-host utilisation, and the simulation's prediction under the real bars.

The drawing is computed here (positions, colours, labels) and laid out by ``templates/report/*.html.j2``
with Jinja2's autoescaping, so no name or message from a record can break the page.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import jinja2

from imaging.engine.timeline import PHASES, Bar, Timeline, merged_bars

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates" / "report"
RESULT_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "undo": "#ef6c00", "running": "#1565c0",
                  "predicted": "#9e9e9e"}
# A simulation's bars are all predictions: they are told apart by phase instead.
PHASE_COLOURS = {"plan": "#b0bec5", "staging": "#8d6e63", "stop": "#78909c", "backup": "#5c6bc0", "disks": "#26a69a",
                 "boot": "#ab47bc", "guest": "#29b6f6", "check": "#9ccc65", "undo": "#ef6c00"}
# Bars that succeeded are green, a shade per phase, so the phases of a row can be told apart at a glance.
OK_SHADES = {"plan": "#a5d6a7", "staging": "#66bb6a", "stop": "#81c784", "backup": "#2e7d32", "disks": "#43a047",
             "boot": "#1b5e20", "guest": "#4caf50", "check": "#388e3c"}
LABEL_W, CHART_W, ROW_H, HEAD_H = 190, 900, 24, 34


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60 and seconds < 10:
        return f"{seconds:.1f}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _ticks(span: float) -> list[float]:
    if span <= 0:
        return [0.0]
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(span / step) + 1)]


def _bar(b: Bar, scale: float, y: float, height: float, instrument: str, *, by_phase: bool = False
         ) -> dict[str, Any]:
    if by_phase:
        colour = PHASE_COLOURS.get(b.phase, "#757575")
    elif b.result == "ok":
        colour = OK_SHADES.get(b.phase, RESULT_COLOURS["ok"])
    else:
        colour = RESULT_COLOURS.get(b.result, "#757575")
    return {"x": round(LABEL_W + b.start * scale, 2), "y": y, "w": round(max(1.5, b.seconds * scale), 2),
            "h": height, "colour": colour, "result": b.result, "phase": b.phase,
            "instrument": instrument,
            "title": f"{instrument}: {b.phase}, {duration(b.seconds)} ({b.result}), from {duration(b.start)}"}


def drawing(t: Timeline) -> dict[str, Any]:
    """Positions of everything in the timeline's SVG."""
    span = max(t.makespan, t.predicted_makespan, 1e-3)
    scale = CHART_W / span
    rows, y = [], HEAD_H
    wave_start: dict[int, float] = {}
    for host in sorted({r.host for r in t.rows}):
        rows.append({"host": host, "y": y + 15})
        y += ROW_H
        for r in [r for r in t.rows if r.host == host]:
            main = r.predicted if t.simulated else merged_bars(r.bars)
            if main:
                wave_start[r.wave] = min(wave_start.get(r.wave, math.inf), main[0].start)
            rows.append({"label": r.instrument, "y": y + 15, "wave": r.wave, "canary": r.canary,
                         "failed": r.status == "failed",
                         "bars": [_bar(b, scale, y + 4, 14 if t.simulated else 11, r.instrument, by_phase=t.simulated)
                                  for b in main],
                         "predicted": [] if t.simulated else
                         [_bar(b, scale, y + 17, 4, r.instrument) for b in r.predicted]})
            y += ROW_H
    waves = [{"x": round(LABEL_W + s * scale, 2), "y": HEAD_H + 4 + 11 * (i % 3),
              "label": "canary" if w == 1 and any(r.canary for r in t.rows) else f"wave {w}"}
             for i, (w, s) in enumerate(sorted(wave_start.items())) if w > 0]
    ticks = [{"x": round(LABEL_W + s * scale, 2), "label": duration(s)} for s in _ticks(span)]
    return {"width": LABEL_W + CHART_W + 20, "height": y + 10, "rows": rows, "waves": waves, "ticks": ticks,
            "top": HEAD_H - 6, "bottom": y}


def render_run(t: Timeline, *, live: bool = False) -> str:
    """The page of one run (``live``: it is still running; the page says so and asks to be reloaded)."""
    failures = [r for r in t.rows if r.status in ("failed", "not_started") or r.way_out]
    totals = t.phase_totals()
    return _env().get_template("run.html.j2").render(
        t=t, live=live, svg=drawing(t), colours=PHASE_COLOURS if t.simulated else RESULT_COLOURS, phases=PHASES,
        duration=duration,
        failures=failures, hosts=t.hosts(), totals=totals,
        counts={s: sum(1 for r in t.rows if r.status == s) for s in sorted({r.status for r in t.rows})},
        carried=[r for r in t.rows if r.carried or r.dropped])


STATUS_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "rolled_back": "#ef6c00", "running": "#1565c0",
                  "interrupted": "#6a1b9a"}


def render_fleet(rows: list[Any], *, when: str, drift_checked: bool) -> str:
    """The fleet page: one row per instrument (what it runs, what is prepared, labels, hotfixes, side, last
    operation, drift) and a strip of its last operations, each a square coloured by its result."""
    strips = []
    for row in rows:
        strips.append([{"x": 2 + i * 16, "colour": STATUS_COLOURS.get(h["status"], "#9e9e9e"),
                        "title": f"{h['kind']} {h['status']} {h['when']} {h['release']} ({h['id']})"}
                       for i, h in enumerate(row.history)])
    return _env().get_template("fleet.html.j2").render(rows=list(zip(rows, strips, strict=True)), when=when,
                                                       drift_checked=drift_checked, colours=STATUS_COLOURS)


def write_page(path: Path, html: str) -> Path:
    """Write the page atomically: a reader on the share sees the old page or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)
    return path
