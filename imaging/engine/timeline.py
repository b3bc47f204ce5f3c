"""What a fleet run did in time: per instrument, one bar per phase (staging, stop, backup, disks, boot, guest,
check, undo), measured from the journal's step times, and the simulation's prediction of the same run.

Read by the HTML report and the live board (``engine.html_report``) and by `invoke calibrate`, which turns
measured phases into a time model. Building a timeline never fails on a damaged or partial record: what
cannot be read is named in ``missing`` and the rest is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imaging.engine.scheduler import FAILED, NOT_STARTED
from imaging.state.journal import CARRY_BATCH, Journal, Operation, StepRecord

PHASES = ("plan", "staging", "stop", "backup", "disks", "boot", "guest", "check", "undo")
# Each step action's phase (the simulation's phases: see engine.simulate.SimRunner.start). Undo steps are
# "undo" whatever their action; an action not listed is counted with the disks.
PHASE_OF: dict[str, str] = {
    **dict.fromkeys(("stage_artifact", "preflight", "export_image"), "staging"),
    **dict.fromkeys(("acquire_lock", "get_state", "check_state", "stop_vm", "read_host_files", "doctor_host",
                     "survey_vm"), "stop"),
    **dict.fromkeys(("backup_volume", "rescue_user_files", "read_volume", "read_guest_files",
                     "write_volume_files", "copy_from_disk", "undo_copy"), "backup"),
    **dict.fromkeys(("start_vm", "wait_guest"), "boot"),
    **dict.fromkeys(("configure_guest", "write_record", "restore_record", "run_guest_command", "apply_hotfix",
                     "revert_hotfix", "stop_services", "start_services", "apply_settings", "restore_settings",
                     "remove_volume_links", "move_aside", "remove_disk_links"), "guest"),
    **dict.fromkeys(("health_check", "release_lock"), "check"),
}


def phase_of(action: str, step_phase: str = "do") -> str:
    return "undo" if step_phase == "undo" else PHASE_OF.get(action, "disks")


@dataclass(frozen=True)
class Bar:
    phase: str
    start: float  # seconds from the run's start
    end: float
    result: str  # ok | failed | undo | running | predicted

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class Row:
    """One instrument of the run."""

    instrument: str
    host: str
    wave: int  # 1-based; the canary's wave is 1 when the run has one
    canary: bool
    status: str
    detail: str = ""
    step: str | None = None
    way_out: str = ""
    seconds: float | None = None  # the instrument's whole job, from the record
    bars: list[Bar] = field(default_factory=list)
    predicted: list[Bar] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # hotfixes re-applied after its reimage
    dropped: list[str] = field(default_factory=list)  # hotfixes dropped on purpose (--drop-hotfix)

    def phase_seconds(self) -> dict[str, float]:
        """Measured seconds per phase (steps summed; time outside any step is the plan phase)."""
        out: dict[str, float] = {}
        for b in self.bars:
            out[b.phase] = out.get(b.phase, 0.0) + b.seconds
        if self.seconds is not None and self.bars:
            out["plan"] = max(0.0, self.seconds - sum(out.values()))
        return out


@dataclass
class Timeline:
    id: str
    kind: str
    subject: str
    status: str
    started: str
    simulated: bool  # a --simulate: every bar is the prediction
    rows: list[Row]
    waves: list[list[str]]
    missing: list[str] = field(default_factory=list)  # what could not be read (damaged or partial record)

    @property
    def makespan(self) -> float:
        ends = [b.end for r in self.rows for b in (r.predicted if self.simulated else r.bars)]
        return max(ends, default=0.0)

    @property
    def predicted_makespan(self) -> float:
        return max((b.end for r in self.rows for b in r.predicted), default=0.0)

    def hosts(self) -> dict[str, dict[str, float]]:
        """Per host: the share of the run during which it worked on any instrument (busy), and the average
        number of its instruments at work (load)."""
        span = self.makespan or 1e-9
        out: dict[str, dict[str, float]] = {}
        for host in sorted({r.host for r in self.rows}):
            bars = [b for r in self.rows if r.host == host for b in (r.predicted if self.simulated else r.bars)]
            out[host] = {"busy": _union(bars) / span, "load": sum(b.seconds for b in bars) / span}
        return out

    def phase_totals(self) -> dict[str, tuple[float, float]]:
        """Per phase: the mean measured and the mean predicted seconds per instrument that ran it."""
        out: dict[str, tuple[float, float]] = {}
        for phase in PHASES:
            got = [r.phase_seconds()[phase] for r in self.rows if phase in r.phase_seconds()]
            want = [sum(b.seconds for b in r.predicted if b.phase == phase) for r in self.rows
                    if any(b.phase == phase for b in r.predicted)]
            if got or want:
                out[phase] = (sum(got) / len(got) if got else 0.0, sum(want) / len(want) if want else 0.0)
        return out


def _union(bars: Iterable[Bar]) -> float:
    total, end = 0.0, float("-inf")
    for b in sorted(bars, key=lambda b: b.start):
        if b.end <= end:
            continue
        total += b.end - max(b.start, end)
        end = b.end
    return total


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def way_out(record: Mapping[str, Any], name: str, result: Mapping[str, Any]) -> str:
    """The one command that gets a failed (or not started) instrument of this run out of where it is."""
    detail = str(result.get("detail") or "")
    if "invoke rollback" in detail:
        return f"invoke rollback --instrument={name}"
    kind = record.get("kind", "deploy")
    if kind == "deploy":
        return f"invoke deploy --release={record.get('release')} --instruments={name}"
    if kind == "hotfix":
        return f"invoke hotfix --patch=PACKAGE --instruments={name}  (the package of {record.get('hotfix')})"
    if kind == "revert":
        return f"invoke hotfix --revert={record.get('hotfix')} --instruments={name}"
    if kind == "switch":
        return f"invoke switch --instruments={name}"
    if kind == "prepare":
        return f"invoke prepare --release={record.get('release')} --instruments={name}"
    return f"invoke {kind} --instruments={name}"


def _rows(record: Mapping[str, Any], hosts: Mapping[str, str]) -> list[Row]:
    waves = [list(w) for w in record.get("waves") or []]
    canary = bool(waves) and len(waves[0]) == 1 and (record.get("options") or {}).get("canary") != ""
    wave_of = {n: i + 1 for i, w in enumerate(waves) for n in w}
    rows = []
    for name in record.get("selection") or []:
        res = (record.get("results") or {}).get(name) or {"status": NOT_STARTED}
        status = str(res.get("status", NOT_STARTED))
        row = Row(instrument=name, host=hosts.get(name, "?"), wave=wave_of.get(name, 0),
                  canary=canary and wave_of.get(name) == 1, status=status, detail=str(res.get("detail") or ""),
                  step=res.get("step"), seconds=res.get("seconds"))
        if status in (FAILED, NOT_STARTED) or "invoke rollback" in row.detail:
            row.way_out = way_out(record, name, res)
        dropped = set((record.get("options") or {}).get("drop_hotfixes") or ())
        before = (record.get("before") or {}).get(name)
        row.dropped = sorted(dropped & set(before if isinstance(before, list) else []))
        rows.append(row)
    return rows


def measured(record: Mapping[str, Any], journal: Journal | None, hosts: Mapping[str, str]) -> Timeline:
    """The run as it happened (or, while it runs, so far): bars from the step times of its operations."""
    rows = _rows(record, hosts)
    missing: list[str] = []
    t0 = _when(record.get("started"))
    if t0 is None:
        missing.append("the run's start time (its record is damaged): bars start at the first step")
    ops: dict[str, list[tuple[Operation, list[StepRecord]]]] = {}
    if journal is None:
        missing.append("the journal: no step times, so no bars")
    else:
        try:
            for op in journal.operations(batch=str(record.get("id"))):
                ops.setdefault(op.instrument, []).append((op, journal.steps(op.id)))
            mine = {o.id: name for name, inst_ops in ops.items() for o, _ in inst_ops}
            by_name = {r.instrument: r for r in rows}
            for op in journal.operations(kind="hotfix"):  # re-applied right after a reimage of this run
                batch = op.batch or ""
                parent = batch[len(CARRY_BATCH):] if batch.startswith(CARRY_BATCH) else ""
                if parent in mine and (op.rollback_point or {}).get("hotfix") and mine[parent] in by_name:
                    by_name[mine[parent]].carried.append(str(op.rollback_point["hotfix"]))
        except Exception as exc:  # a damaged journal: draw what the record says
            missing.append(f"the journal could not be read ({exc})")
    starts = [w for inst_ops in ops.values() for _, steps in inst_ops for s in steps if (w := _when(s.started))]
    if t0 is None and starts:
        t0 = min(starts)
    for row in rows:
        for _, steps in ops.get(row.instrument, []):
            for s in steps:
                a, b = _when(s.started), _when(s.ended)
                if a is None or t0 is None:
                    missing.append(f"{row.instrument}: step {s.action} has no readable start time")
                    continue
                end = b or a
                result = "undo" if s.phase == "undo" else ("failed" if s.status == FAILED else
                                                            "running" if b is None else "ok")
                row.bars.append(Bar(phase_of(s.action, s.phase), (a - t0).total_seconds(),
                                    (end - t0).total_seconds(), result))
        if row.status not in (NOT_STARTED, "skipped") and not row.bars and journal is not None:
            missing.append(f"{row.instrument}: no steps in the journal for this run")
    prediction = record.get("prediction") or {}
    for row in rows:
        row.predicted = [Bar(p, float(a), float(b), "predicted") for p, a, b in (prediction.get("trace") or {})
                         .get(row.instrument, [])]
    return Timeline(id=str(record.get("id", "?")), kind=str(record.get("kind", "deploy")),
                    subject=str(record.get("subject") or record.get("release") or record.get("hotfix") or ""),
                    status=str(record.get("status", "?")), started=str(record.get("started") or "?"),
                    simulated=False, rows=rows, waves=[list(w) for w in record.get("waves") or []],
                    missing=sorted(set(missing)))


def simulated(kind: str, subject: str, waves: list[list[str]], hosts: Mapping[str, str],
              trace: Mapping[str, list[tuple[str, float, float]]], *, canary: bool) -> Timeline:
    """A --simulate as a timeline: every bar is the prediction."""
    record = {"kind": kind, "waves": waves, "selection": [n for w in waves for n in w],
              "options": {"canary": None if canary else ""}, "results": {}}
    rows = _rows(record, hosts)
    for row in rows:
        row.status, row.way_out = "predicted", ""
        row.predicted = [Bar(p, a, b, "predicted") for p, a, b in trace.get(row.instrument, [])]
    return Timeline(id="simulation", kind=kind, subject=subject, status="simulated", started="-",
                    simulated=True, rows=rows, waves=waves)


def merged_bars(bars: list[Bar]) -> list[Bar]:
    """Consecutive steps of one phase and result drawn as one bar (what the page shows)."""
    out: list[Bar] = []
    for b in sorted(bars, key=lambda b: (b.start, b.end)):
        if out and out[-1].phase == b.phase and out[-1].result == b.result:
            last = out[-1]
            out[-1] = Bar(b.phase, last.start, max(last.end, b.end), b.result)
        else:
            out.append(b)
    return out


def prediction_record(trace: Mapping[str, list[tuple[str, float, float]]], makespan: float) -> dict[str, Any]:
    """How a prediction is kept in a run's record (and its JSON report), for the report to draw it."""
    return {"makespan": round(makespan, 3),
            "trace": {name: [[p, round(a, 3), round(b, 3)] for p, a, b in bars] for name, bars in trace.items()}}
