"""The fleet runner: any per-instrument operation over many instruments, in waves, on real threads.

It knows no particular operation. A deploy, a hotfix and a revert each hand it a ``work`` function (one
instrument's job); the runner applies the scheduler's waves and limits, keeps the run's record up to date
as jobs end, runs every job under the fleet guard (a crash-safe file lock per instrument, so two fleet runs
never work on one instrument together), turns a job's exception into that instrument's failed result, and
writes the reports at the end.

The result vocabulary, from small to large: a step's result is the provider's dict (``changed`` and what
it saw); one operation on one instrument ends in an ``executor.Outcome``; that instrument's part of a
fleet run is a ``scheduler.Result``; the whole run is a ``FleetResult``.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, LockHeld
from imaging.core.stamps import who
from imaging.engine.board import LiveBoard, snapshot_of
from imaging.engine.executor import Busy, Outcome, instrument_guard
from imaging.engine.reports import subject, write_reports
from imaging.engine.scheduler import (
    DEFAULT_MAX_FAIL_PERCENT,
    FAILED,
    NOT_STARTED,
    SKIPPED,
    Event,
    Job,
    Limits,
    Result,
    Summary,
    run_waves,
)
from imaging.engine.scheduler import OK as JOB_OK
from imaging.state.journal import RUNNING, Journal
from imaging.state.runs import RunRecords

FLEET_GUARDS = "deploy"  # the folder under the locks folder holding the fleet guard files


@dataclass
class Options:
    parallel: int = 4
    max_fail_percent: float = DEFAULT_MAX_FAIL_PERCENT
    canary: str | None = None    # None: the first of the selection; "": no canary wave
    batches: str = "100%"
    force: bool = False
    pulls: int = 4               # hosts pulling images from the share at once (hosts not staged beforehand)
    drop_hotfixes: tuple[str, ...] = ()  # hotfixes the operator accepts to lose (deploy only)
    allow_dirty: bool = False    # deploy settings rendered from uncommitted templates or inventory (recorded)

    def __post_init__(self) -> None:
        self.drop_hotfixes = tuple(self.drop_hotfixes)  # a record read back from JSON holds a list


@dataclass
class FleetResult:
    """The outcome of a fleet run (deploy, hotfix or revert): the scheduler's summary, the record and the
    reports; ``outcomes`` holds each instrument's own result (an executor Outcome or the exception)."""

    id: str
    release: str | None
    summary: Summary
    record: dict[str, Any]
    report_md: Path
    report_json: Path
    report_html: Path | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return subject(self.record)

    @property
    def failed(self) -> bool:
        """True when the run stopped early or any instrument failed (the task exits non-zero)."""
        return bool(self.summary.stopped or self.summary.names(FAILED))


ProgressFn = Callable[[str, Any], None]
"""``progress(kind, payload)``: kind "event" with a scheduler Event, or "step" with a StepEvent."""

Work = Callable[[Job, Callable[[Result], None]], Result]
"""One instrument's job: ``work(job, notify)`` returns its result; ``notify`` passes an early result (the
host's images were pulled) to the scheduler."""


def limits_for(per_host: dict[str, int], options: Options) -> Limits:
    return Limits(parallel=options.parallel, max_fail_percent=options.max_fail_percent, pulls=options.pulls,
                  per_host=dict(per_host))


def new_record(kind: str, run_id: str, names: list[str], waves: list[list[Job]], options: Options,
               before: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The record every fleet run keeps (and its reports): who, when, what, waves, results."""
    return {"id": run_id, "kind": kind, "release": None, **extra, "user": who(), "machine": socket.gethostname(),
            "pid": os.getpid(), "started": datetime.now(UTC).isoformat(timespec="seconds"), "ended": None,
            "status": RUNNING, "selection": list(names), "before": before, "options": asdict(options),
            "waves": [[j.name for j in w] for w in waves], "results": {}, "stopped": None, "resumed": []}


def outcome_result(name: str, outcome: Outcome, restored: str) -> Result:
    """One instrument's executor outcome as a scheduler result; ``restored`` says what a restored failure
    means for this kind of run. A lock held elsewhere is busy (skipped), not failed."""
    if outcome.ok:
        return Result(name, JOB_OK)
    if outcome.failed_step == "acquire_lock" and outcome.restored:
        return Result(name, SKIPPED, f"busy: {outcome.error}")
    how = restored if outcome.restored else \
        f"NOT fully restored ({outcome.status}); run `invoke rollback --instrument={name}`"
    return Result(name, FAILED, f"{outcome.error} ({how})", step=outcome.failed_step)


def guarded(locks: Path, name: str, body: Callable[[], Result]) -> Result:
    """Run one instrument's job under the fleet guard every fleet run shares (a deploy and a hotfix never
    work on one instrument together); busy is skipped, a refusal is a failure at planning."""
    try:
        with instrument_guard(locks / FLEET_GUARDS, name):
            return body()
    except (Busy, LockHeld) as exc:
        return Result(name, SKIPPED, f"busy: {exc}")
    except ImagingError as exc:
        return Result(name, FAILED, str(exc), step="plan")


class ThreadRunner:
    """A ``scheduler.Runner`` on the real clock: each job is a thread running one instrument's work."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.done: queue.Queue[Result] = queue.Queue()
        self.threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic()

    def start(self, job: Job) -> None:
        def body() -> None:
            try:
                res = self.work(job, self.done.put)
            except Exception as exc:  # noqa: BLE001 - a job's failure is a result, never a crash of the run
                res = Result(job.name, FAILED, f"{type(exc).__name__}: {exc}")
            self.done.put(res)

        t = threading.Thread(target=body, name=f"fleet-{job.name}", daemon=True)
        self.threads.append(t)
        t.start()

    def wait(self) -> list[Result]:
        out = [self.done.get()]
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out


@dataclass(frozen=True)
class Where:
    """The folders a fleet run uses: its record, the locks (fleet guards), the reports."""

    records: RunRecords
    locks: Path
    reports: Path
    journal: Journal | None = None  # the step times the HTML report and the live board draw


def run_fleet(where: Where, record: dict[str, Any], waves: list[list[Job]], limits: Limits, work: Work, *,
              progress: ProgressFn | None = None, done: dict[str, Result] | None = None,
              state_of: Callable[[str], Any]) -> FleetResult:
    """Run per-instrument jobs in waves on real threads and report: the engine of every fleet run.

    ``record`` (see ``new_record``) is kept up to date as jobs end; ``work`` does one instrument's job, under
    the fleet guard; ``state_of`` reads what an instrument carries afterwards (its release, its hotfixes)
    for the record's ``after``. Ends with the Markdown and JSON reports."""
    emit = progress or (lambda kind, payload: None)
    done = done or {}
    lock = threading.Lock()
    times: dict[str, dict[str, float]] = {}
    t_start = time.monotonic()

    def observe(ev: Event) -> None:
        with lock:
            if ev.kind == "job_start" and ev.job:
                times[ev.job.name] = {"start": ev.time - t_start}
            elif ev.kind == "job_end" and ev.job and ev.result:
                times.setdefault(ev.job.name, {})["end"] = ev.time - t_start
                record["results"][ev.job.name] = _result_dict(ev.result, times[ev.job.name])
                where.records.write(record)
            elif ev.kind == "stop":
                record["stopped"] = ev.message
                where.records.write(record)
        emit("event", ev)

    def guarded_work(job: Job, notify: Callable[[Result], None]) -> Result:
        return guarded(where.locks, job.name, lambda: work(job, notify))

    hosts = {j.name: j.host for w in waves for j in w}
    board = LiveBoard(where.reports / f"{record['id']}.html", snapshot_of(record, lock), where.journal, hosts)
    try:
        with instrument_guard(where.locks / FLEET_GUARDS, record["id"]):
            where.records.write(record)
            with board:
                summary = run_waves(waves, ThreadRunner(guarded_work), limits, done=done, observe=observe)
    except Busy:
        raise ImagingError(f"{record.get('kind', 'deploy')} {record['id']} is being run by another process") from None
    for name in record["selection"]:
        if name not in summary.results:
            record["results"][name] = {"status": NOT_STARTED, "detail": "", "step": None}
        elif name in done and name not in record["results"]:
            record["results"][name] = _result_dict(done[name], {})
    record["stopped"] = summary.stopped
    record["status"] = "stopped" if summary.stopped else "finished"
    record["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["after"] = {name: state_of(name) for name in record["selection"]}
    final = board.draw(live=False)  # the report page; its measured phases go into the record for calibrate
    if final is not None:
        record["phases"] = {r.instrument: {k: round(v, 3) for k, v in r.phase_seconds().items()}
                            for r in final.rows if r.bars}
    elif board.error:
        record["report_error"] = board.error
    where.records.write(record)
    md, js = write_reports(where.reports, record)
    return FleetResult(id=record["id"], release=record.get("release"), summary=summary, record=record,
                       report_md=md, report_json=js, rows=record["results"],
                       report_html=board.path if final is not None else None)


def _result_dict(res: Result, t: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": res.status, "detail": res.detail, "step": res.step}
    if "start" in t and "end" in t:
        out["seconds"] = round(t["end"] - t["start"], 2)
    return out
