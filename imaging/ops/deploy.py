"""Deploy a release to many instruments: the fleet plan, the deploy record, real threads, resume, reports.

The scheduling decisions (waves, limits, max-fail-percent, ordering) live in ``imaging.engine.scheduler``; this
module gives it a ``ThreadRunner`` that runs ``operations.reimage`` per instrument on the real clock.

A deploy has an id, which is the ``batch`` column of every reimage operation it starts, and a record in
``<state>/deploys/<id>.json`` (selection, waves, options, status, results). ``resume`` reads the record
and the journal: instruments whose operation in this deploy finished are never touched again, an
interrupted one is continued (the same operation, not a new reimage), the rest are scheduled.

Two processes (or two operators sharing the state folder) never operate on one instrument together: each
instrument's job runs under a deploy guard (a crash-safe file lock) and then the executor's own guard and
host-side lock; an instrument that is busy is reported as skipped, not failed.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, InputError, LockHeld
from imaging.engine.executor import Busy, Outcome, StepEvent, instrument_guard, is_live
from imaging.engine.scheduler import (
    FAILED,
    NOT_STARTED,
    PULLED,
    SKIPPED,
    Batch,
    Event,
    Job,
    Limits,
    Result,
    Summary,
    parse_batches,
    plan_waves,
    run_waves,
)
from imaging.engine.scheduler import OK as JOB_OK
from imaging.engine.simulate import Prediction, TimeModel, predict
from imaging.model import layout
from imaging.model.inventory import Instrument
from imaging.model.releases import ReleaseDefinition
from imaging.ops import reimage as operations
from imaging.ops.reimage import Context
from imaging.state.journal import OK, RUNNING, who

DEPLOYS_DIR = "deploys"
DEPLOY_LOCKS = "deploy"

# --- selection -----------------------------------------------------------------------------------------


def select(ctx: Context, *, group: str | None = None, instruments: str = "", everything: bool = False,
           state: Path | None = None, kind: str = "deploy") -> list[Instrument]:
    """The instruments a fleet run works on: ``--group``, ``--instruments=A,B`` or ``@failed`` (the failures
    of the last run of the same ``kind``: deploy, hotfix or revert), or ``--all``."""
    names = [n.strip() for n in instruments.split(",") if n.strip()]
    if not (group or names or everything):
        raise InputError("choose what to deploy", field="--group/--instruments/--all",
                         fix="pass --group=A, --instruments=ZOOM,LARMOR, --instruments=@failed or --all")
    if "@failed" in names:
        last = last_deploy(ctx, kind=kind)
        if last is None:
            raise InputError(f"no earlier {kind} to take failures from", field="--instruments", value="@failed",
                             fix="name the instruments instead")
        failed = [n for n, r in last.get("results", {}).items() if r.get("status") == FAILED]
        names = [n for n in names if n != "@failed"] + failed
        if not names:
            raise InputError(f"the last {kind} ({last['id']}) had no failures", field="--instruments",
                             value="@failed", fix="nothing to redo; name instruments to deploy them")
    return ctx.inventory.select(names=names or None, group=group)


# --- the fleet plan ------------------------------------------------------------------------------------


def hotfixes_dropped(ctx: Context, inst: Instrument, target: ReleaseDefinition) -> list[str]:
    """Hotfixes on the instrument that the target release would drop: neither included in it nor declared
    for it (``hotfix_ops.hotfixes_blocking``, from the journal: a reimage refuses these unless told to drop
    them), plus any listed in the instrument record on Var (lab hosts) that the release does not include."""
    from imaging.ops.hotfix import hotfixes_blocking

    dropped = set(hotfixes_blocking(ctx, inst, target.id))
    record = instrument_record(ctx, inst)
    if record:
        have = [str(h.get("id", h)) if isinstance(h, dict) else str(h) for h in record.get("hotfixes", [])]
        carried = set(hotfixes_carried(ctx, inst, target.id))
        dropped |= {h for h in have if h not in set(target.includes_hotfixes) and h not in carried}
    return sorted(dropped)


def hotfixes_carried(ctx: Context, inst: Instrument, release: str) -> list[str]:
    """Hotfixes a reimage to ``release`` carries over (re-applies); shown in the plan's note."""
    from imaging.ops.hotfix import hotfixes_to_reapply

    return hotfixes_to_reapply(ctx, inst, release)


def migrations_needed(ctx: Context, inst: Instrument, current: str | None, target: ReleaseDefinition) -> list[str]:
    """The settings migrations the move runs, by id, from the settings version of the running release to the
    target's (``imaging.settings.migrations``); a move with no known path is named as such rather than hidden."""
    from imaging.settings.migrations import plan_migrations

    if current is None or current not in ctx.releases:
        return []
    start, end = ctx.releases[current].settings_version, target.settings_version
    if start >= end:
        return []
    try:
        return [m.id for m in plan_migrations(start, end)]
    except ImagingError as exc:
        return [f"NO PATH v{start}->v{end}: {exc}"]


def instrument_record(ctx: Context, inst: Instrument) -> dict[str, Any] | None:
    """The instrument record on its Var disk, where the provider can read it without a guest call."""
    host = ctx.inventory.host_of(inst)
    if host.provider != "lab":
        return None
    return ctx.providers.lab.read_record(inst.host, inst.vm, layout.disk_path(host, inst, "var"))


def not_staged(ctx: Context, release: str, host_name: str) -> list[str] | None:
    """The release's artifacts missing on a host; None when that cannot be seen without a host call."""
    host = ctx.inventory.hosts[host_name]
    if host.provider != "lab":
        return None
    os_img, apps_img = operations.artifacts_of(ctx, release, lab=True, create=False)
    missing = []
    for art in (os_img, apps_img):
        meta = ctx.providers.lab.path(host_name, layout.image_path(host, art.name, art.sha256)) / "disk.json"
        if not meta.exists() or json.loads(meta.read_text()).get("sha256") != art.sha256:
            missing.append(art.name)
    return missing


@dataclass
class PlanRow:
    instrument: str
    host: str
    now: str | None
    after: str
    migrations: list[str]
    hotfixes_dropped: list[str]
    not_staged: list[str] | None
    estimate_s: float
    note: str = ""


def fleet_plan(ctx: Context, insts: list[Instrument], release: str, model: TimeModel) -> list[PlanRow]:
    """Per instrument: release now and after, migrations, hotfixes that would be dropped, staging, time."""
    rows = []
    staged_cache: dict[tuple[str, str], list[str] | None] = {}
    for inst in insts:
        target = operations.desired_release(ctx, inst, release)
        rel = ctx.releases[target]
        now = operations.running_release(ctx, inst)
        key = (target, inst.host)
        if key not in staged_cache:
            staged_cache[key] = not_staged(ctx, target, inst.host)
        missing = staged_cache[key]
        note = ""
        if operations.interrupted(ctx, inst):
            note = "interrupted operation: resume or roll back first"
        elif now == target:
            note = "already on the release (skipped unless --force)"
        carry = hotfixes_carried(ctx, inst, target)
        if carry:
            note = "; ".join(filter(None, [note, "re-applies " + ", ".join(carry)]))
        rows.append(PlanRow(instrument=inst.name, host=inst.host, now=now, after=target,
                            migrations=migrations_needed(ctx, inst, now, rel),
                            hotfixes_dropped=hotfixes_dropped(ctx, inst, rel), not_staged=missing,
                            estimate_s=model.alone_s(inst.host, staged=not missing), note=note))
    return rows


# --- the deploy record ---------------------------------------------------------------------------------


def deploys_dir(ctx: Context) -> Path:
    return ctx.paths.state / DEPLOYS_DIR


def new_deploy_id(kind: str = "deploy") -> str:
    """A fleet run's id, also the ``batch`` of every operation it starts: ``<kind>-<UTC time>-<random>``."""
    return kind + "-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_record(ctx: Context, record: dict[str, Any]) -> None:
    d = deploys_dir(ctx)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{record['id']}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, d / f"{record['id']}.json")


def read_record(ctx: Context, deploy_id: str) -> dict[str, Any]:
    f = deploys_dir(ctx) / f"{deploy_id}.json"
    if not f.exists():
        raise InputError(f"no deploy {deploy_id}", file=str(f), fix="see the ids in the deploys folder")
    return json.loads(f.read_text(encoding="utf-8"))


def all_records(ctx: Context, kind: str = "deploy") -> list[dict[str, Any]]:
    """The records of one kind of fleet run (deploy, hotfix, revert), oldest first."""
    d = deploys_dir(ctx)
    recs = [json.loads(f.read_text(encoding="utf-8")) for f in d.glob(f"{kind}-*.json")] if d.is_dir() else []
    return sorted((r for r in recs if r.get("kind", "deploy") == kind), key=lambda r: (r["started"], r["id"]))


def last_deploy(ctx: Context, kind: str = "deploy") -> dict[str, Any] | None:
    recs = all_records(ctx, kind)
    return recs[-1] if recs else None


def resumable(ctx: Context) -> dict[str, Any] | None:
    """The newest deploy that did not finish and whose controlling process is gone (hotfix runs are not
    resumed: each instrument's hotfix is one short operation, run again with ``--instruments=@failed``)."""
    guard_dir = ctx.paths.locks / DEPLOY_LOCKS
    for rec in reversed(all_records(ctx)):
        if rec["status"] == RUNNING and not is_live(guard_dir, rec["id"]):
            return rec
    return None


# --- running -------------------------------------------------------------------------------------------


@dataclass
class Options:
    parallel: int = 4
    max_fail_percent: float = 100.0
    canary: str | None = None    # None: the first of the selection; "": no canary wave
    batches: str = "100%"
    force: bool = False
    pulls: int = 4               # hosts pulling images from the share at once (hosts not staged beforehand)
    drop_hotfixes: tuple[str, ...] = ()  # hotfixes the operator accepts to lose (deploy only)

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
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, Any] = field(default_factory=dict)


DeployResult = FleetResult


ProgressFn = Callable[[str, Any], None]
"""``progress(kind, payload)``: kind "event" with a scheduler Event, or "step" with a StepEvent."""


class ThreadRunner:
    """A ``scheduler.Runner`` on the real clock: each job is a thread running one instrument's work."""

    def __init__(self, work: Callable[[Job, Callable[[Result], None]], Result]) -> None:
        self.work = work
        self.done: queue.Queue[Result] = queue.Queue()
        self.threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic()

    def start(self, job: Job) -> None:
        def body() -> None:
            try:
                res = self.work(job, self.done.put)
            except Exception as exc:  # noqa: BLE001 - a job's failure is a result, never a crash of the deploy
                res = Result(job.name, FAILED, f"{type(exc).__name__}: {exc}")
            self.done.put(res)

        t = threading.Thread(target=body, name=f"deploy-{job.name}", daemon=True)
        self.threads.append(t)
        t.start()

    def wait(self) -> list[Result]:
        out = [self.done.get()]
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out


def _instrument_outcomes(ctx: Context, deploy_id: str) -> dict[str, Any]:
    """The operations this deploy started, newest per instrument."""
    latest: dict[str, Any] = {}
    for op in ctx.journal.operations(batch=deploy_id):
        latest[op.instrument] = op
    return latest


def _work(ctx: Context, deploy_id: str, targets: dict[str, str], options: Options,
          progress: ProgressFn) -> Callable[[Job, Callable[[Result], None]], Result]:
    def listener(ev: StepEvent) -> None:
        progress("step", ev)

    def reimage_one(job: Job, notify: Callable[[Result], None]) -> Result:
        name = job.name
        inst = ctx.inventory.instrument(name)
        op = ctx.journal.last(name)
        if op and op.batch == deploy_id and op.status != RUNNING:
            return Result(name, JOB_OK if op.status == OK else FAILED, op.error or "", step=None)
        stuck = operations.interrupted(ctx, inst)
        if stuck is not None and stuck.batch == deploy_id:
            outcome = operations.resume(ctx, name, listener=listener)
        elif stuck is not None:
            return Result(name, SKIPPED, f"has an interrupted {stuck.kind} ({stuck.id}) from outside "
                          "this deploy; resume or roll it back first")
        elif not options.force and operations.running_release(ctx, inst) == targets[name]:
            return Result(name, SKIPPED, f"already on {targets[name]}")
        else:
            if job.unstaged:  # this job pulls the images for its host; the scheduler holds the others
                try:
                    operations.stage(ctx, targets[name], inst.host)
                except ImagingError as exc:
                    return Result(name, FAILED, f"staging on {inst.host}: {exc}", step="stage_artifact")
                notify(Result(name, PULLED, inst.host))
            have = carried_hotfixes(ctx, inst)
            drop = tuple(h for h in options.drop_hotfixes if h in have)
            outcome = operations.reimage(ctx, name, targets[name], listener=listener, batch=deploy_id,
                                         drop_hotfixes=drop)
        return outcome_result(name, outcome, "restored to its previous release")

    def work(job: Job, notify: Callable[[Result], None]) -> Result:
        return guarded(ctx, job.name, lambda: reimage_one(job, notify))

    return work


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


def guarded(ctx: Context, name: str, body: Callable[[], Result]) -> Result:
    """Run one instrument's job under the fleet guard every fleet run shares (a deploy and a hotfix never
    work on one instrument together); busy is skipped, a refusal is a failure at planning."""
    try:
        with instrument_guard(ctx.paths.locks / DEPLOY_LOCKS, name):
            return body()
    except (Busy, LockHeld) as exc:
        return Result(name, SKIPPED, f"busy: {exc}")
    except ImagingError as exc:
        return Result(name, FAILED, str(exc), step="plan")


def prepare(ctx: Context, insts: list[Instrument], release: str) -> dict[str, str]:
    """Resolve each instrument's target and make sure every host has the images on its share (lab: the
    samples are built once here, before threads start)."""
    targets = {i.name: operations.desired_release(ctx, i, release) for i in insts}
    for rid, host in sorted({(targets[i.name], i.host) for i in insts}):
        if ctx.inventory.hosts[host].provider == "lab":
            operations.publish(ctx, rid, host)
    return targets


def jobs_for(ctx: Context, insts: list[Instrument], model: TimeModel, targets: dict[str, str]) -> list[Job]:
    jobs = []
    for inst in insts:
        missing = not_staged(ctx, targets[inst.name], inst.host)
        jobs.append(Job(inst.name, inst.host, model.alone_s(inst.host, staged=not missing), unstaged=bool(missing)))
    return jobs


def limits_for(ctx: Context, options: Options) -> Limits:
    return Limits(parallel=options.parallel, max_fail_percent=options.max_fail_percent, pulls=options.pulls,
                  per_host={h.name: h.max_concurrent for h in ctx.inventory.hosts.values()})


def carried_hotfixes(ctx: Context, inst: Instrument) -> set[str]:
    from imaging.ops.hotfix import carried

    return set(carried(ctx, inst).hotfixes)


def refuse_lost_hotfixes(ctx: Context, insts: list[Instrument], targets: dict[str, str],
                         drop: tuple[str, ...] = ()) -> None:
    """Refuse the whole deploy, before any instrument is touched, when one instrument would lose a hotfix
    its target release neither includes nor is declared for and the operator did not drop
    (``--drop-hotfix``); a dropped id that no selected instrument carries is a typo and refused too."""
    from imaging.ops.hotfix import hotfixes_blocking

    carried_any: set[str] = set()
    losing: list[str] = []
    for inst in insts:
        carried_any |= carried_hotfixes(ctx, inst)
        blocking = hotfixes_blocking(ctx, inst, targets[inst.name], drop)
        if blocking:
            losing.append(f"{inst.name} carries {', '.join(blocking)} ({targets[inst.name]} lacks it)")
    unknown = sorted(set(drop) - carried_any)
    if unknown:
        raise InputError(f"no selected instrument carries hotfix {', '.join(unknown)}; nothing was changed",
                         field="--drop-hotfix", value=",".join(drop),
                         fix="see `invoke hotfixes` for who carries what; drop only hotfixes that are carried")
    if losing:
        ids = sorted({h for inst in insts for h in hotfixes_blocking(ctx, inst, targets[inst.name], drop)})
        raise InputError("the deploy would drop hotfixes: " + "; ".join(losing) + "; nothing was changed",
                         field="--release", value=",".join(sorted(set(targets.values()))),
                         fix="add the release to each hotfix's applies_to, deploy a release that includes it, "
                             f"or accept losing it with --drop-hotfix={','.join(ids)}")


def new_record(kind: str, run_id: str, insts: list[Instrument], waves: list[list[Job]], options: Options,
               before: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The record every fleet run keeps in the deploys folder (and its reports): who, when, what, waves."""
    return {"id": run_id, "kind": kind, "release": None, **extra, "user": who(), "machine": socket.gethostname(),
            "pid": os.getpid(), "started": datetime.now(UTC).isoformat(timespec="seconds"), "ended": None,
            "status": RUNNING, "selection": [i.name for i in insts], "before": before, "options": asdict(options),
            "waves": [[j.name for j in w] for w in waves], "results": {}, "stopped": None, "resumed": []}


def deploy(ctx: Context, insts: list[Instrument], release: str, options: Options, *,
           model: TimeModel | None = None, progress: ProgressFn | None = None,
           deploy_id: str | None = None) -> FleetResult:
    """Deploy ``release`` to the instruments in waves; write the record and the reports."""
    model = model or TimeModel()
    batches: list[Batch] = parse_batches(options.batches)
    refuse_lost_hotfixes(ctx, insts, {i.name: operations.desired_release(ctx, i, release) for i in insts},
                         options.drop_hotfixes)
    targets = prepare(ctx, insts, release)
    jobs = jobs_for(ctx, insts, model, targets)
    waves = plan_waves(jobs, canary=options.canary, batches=batches)
    record = new_record("deploy", deploy_id or new_deploy_id(), insts, waves, options,
                        {i.name: operations.running_release(ctx, i) for i in insts}, release=release, targets=targets)
    work = _work(ctx, record["id"], targets, options, progress or (lambda kind, payload: None))
    return run_fleet(ctx, record, waves, limits_for(ctx, options), work, progress=progress,
                     state_of=lambda inst: operations.running_release(ctx, inst))


def resume(ctx: Context, *, deploy_id: str | None = None, model: TimeModel | None = None,
           progress: ProgressFn | None = None) -> FleetResult:
    """Pick up an interrupted deploy from its record and the journal."""
    model = model or TimeModel()
    record = read_record(ctx, deploy_id) if deploy_id else resumable(ctx)
    if record is None:
        raise ImagingError("no interrupted deploy to resume (every deploy finished or is still running)")
    if record["status"] != RUNNING:
        raise ImagingError(f"deploy {record['id']} is {record['status']}; nothing to resume")
    options = Options(**record["options"])
    insts = [ctx.inventory.instrument(n) for n in record["selection"]]
    targets = prepare(ctx, insts, record["release"])
    by_name = {j.name: j for j in jobs_for(ctx, insts, model, targets)}
    waves = [[by_name[n] for n in w] for w in record["waves"]]
    done: dict[str, Result] = {}
    for name, r in record.get("results", {}).items():
        done[name] = Result(name, r["status"], r.get("detail", ""), r.get("step"))
    for name, op in _instrument_outcomes(ctx, record["id"]).items():
        if op.status == OK:
            done[name] = Result(name, JOB_OK)
        elif op.status != RUNNING:
            step = next((s.action for s in reversed(ctx.journal.steps(op.id))
                         if s.phase == "do" and s.status == FAILED), None)
            done[name] = Result(name, FAILED, op.error or op.status, step=step)
        else:
            done.pop(name, None)  # interrupted: the job resumes it
    record["resumed"].append({"when": datetime.now(UTC).isoformat(timespec="seconds"), "user": who(),
                              "machine": socket.gethostname(), "pid": os.getpid()})
    work = _work(ctx, record["id"], record["targets"], options, progress or (lambda kind, payload: None))
    return run_fleet(ctx, record, waves, limits_for(ctx, options), work, progress=progress, done=done,
                     state_of=lambda inst: operations.running_release(ctx, inst))


def run_fleet(ctx: Context, record: dict[str, Any], waves: list[list[Job]], limits: Limits,
              work: Callable[[Job, Callable[[Result], None]], Result], *, progress: ProgressFn | None = None,
              done: dict[str, Result] | None = None, state_of: Callable[[Instrument], Any]) -> FleetResult:
    """Run per-instrument operations in waves on real threads and report: the engine of every fleet run.

    ``record`` (see ``new_record``) is kept up to date in the deploys folder as jobs end; ``work`` does one
    instrument's job; ``state_of`` reads what an instrument carries afterwards (its release, its hotfixes)
    for the record's ``after``. Ends with the Markdown and JSON reports in the reports folder."""
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
                write_record(ctx, record)
            elif ev.kind == "stop":
                record["stopped"] = ev.message
                write_record(ctx, record)
        emit("event", ev)

    guard_dir = ctx.paths.locks / DEPLOY_LOCKS
    try:
        with instrument_guard(guard_dir, record["id"]):
            write_record(ctx, record)
            summary = run_waves(waves, ThreadRunner(work), limits, done=done, observe=observe)
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
    record["after"] = {i: state_of(ctx.inventory.instrument(i)) for i in record["selection"]}
    write_record(ctx, record)
    md, js = write_reports(ctx, record)
    return FleetResult(id=record["id"], release=record.get("release"), summary=summary, record=record,
                       report_md=md, report_json=js, rows=record["results"])


def _result_dict(res: Result, t: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": res.status, "detail": res.detail, "step": res.step}
    if "start" in t and "end" in t:
        out["seconds"] = round(t["end"] - t["start"], 2)
    return out


# --- reports -------------------------------------------------------------------------------------------


def write_reports(ctx: Context, record: dict[str, Any]) -> tuple[Path, Path]:
    """The run's report as JSON (the record, complete) and Markdown (for people), in the reports folder."""
    out = ctx.paths.reports
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{record['id']}.json"
    js.write_text(json.dumps(record, indent=2), encoding="utf-8")
    md = out / f"{record['id']}.md"
    md.write_text(report_markdown(record), encoding="utf-8")
    return md, js


def subject(record: dict[str, Any]) -> str:
    """What a fleet run did, in a few words: ``release 2026C3.1``, ``hotfix HF-001``, ``revert HF-001``."""
    kind = record.get("kind", "deploy")
    if kind == "deploy":
        return f"release {record['release']}"
    return f"{kind} {record.get('hotfix', '')}".strip()


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value) if value else "-"


def report_markdown(record: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in record["results"].values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    kind = record.get("kind", "deploy")
    lines = [f"# {kind.capitalize()} {record['id']}", "",
             f"- {subject(record).replace(' ', ': ', 1)}" if kind == "deploy" else f"- {subject(record)}",
             f"- by: {record['user']} on {record['machine']}",
             f"- started: {record['started']}; ended: {record.get('ended') or '-'}",
             f"- status: {record['status']}" + (f" ({record['stopped']})" if record.get("stopped") else ""),
             f"- waves: {' | '.join(', '.join(w) for w in record['waves'])}",
             "- outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    for r in record.get("resumed", []):
        lines.insert(-1, f"- resumed: {r['when']} by {r['user']} on {r['machine']}")
    state = "release" if kind == "deploy" else "hotfixes"
    lines += [f"| instrument | {state} before | {state} after | result | seconds | step | error |",
              "|---|---|---|---|---|---|---|"]
    for name in record["selection"]:
        r = record["results"].get(name, {"status": NOT_STARTED})
        detail = (r.get("detail") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {_cell(record['before'].get(name))} | {_cell(record.get('after', {}).get(name))} | "
                     f"{r['status']} | {r.get('seconds', '')} | {r.get('step') or ''} | {detail} |")
    return "\n".join(lines) + "\n"


# --- prediction ----------------------------------------------------------------------------------------


def simulate(ctx: Context, insts: list[Instrument], release: str, options: Options, model: TimeModel, *,
             failing: set[str] | None = None) -> Prediction:
    """Predict the deploy with the same waves and limits it would use, on a virtual clock. Touches nothing."""
    targets = {i.name: operations.desired_release(ctx, i, release) for i in insts}
    staged = set()
    for h in {i.host for i in insts}:
        seen = [not_staged(ctx, targets[i.name], h) for i in insts if i.host == h]
        if all(m == [] or (m is None and model.staged) for m in seen):
            staged.add(h)  # staged as observed, or (hosts the tool cannot look at) as the model assumes
    jobs = [Job(i.name, i.host, model.alone_s(i.host, staged=i.host in staged), unstaged=i.host not in staged)
            for i in insts]
    waves = plan_waves(jobs, canary=options.canary, batches=parse_batches(options.batches))
    return predict(waves, model, limits_for(ctx, options), staged_hosts=staged, failing=failing)
