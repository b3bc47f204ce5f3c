"""Deploy a release to many instruments: the fleet plan, the deploy itself (reimages in waves through the
fleet runner), resume of an interrupted deploy, and its prediction on a virtual clock.

A deploy has an id, which is the ``batch`` of every reimage it starts, and a record (``state.runs``).
``resume`` reads the record and the journal: instruments whose operation in this deploy finished are never
touched again, an interrupted one is continued (the same operation, not a new reimage), the rest are
scheduled. Each instrument's target release is resolved once, when the deploy is planned.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from imaging.core.errors import ImagingError, InputError
from imaging.core.stamps import who
from imaging.engine.executor import Outcome, StepEvent, is_live
from imaging.engine.runner import (
    FLEET_GUARDS,
    FleetResult,
    Options,
    ProgressFn,
    limits_for,
    new_record,
    outcome_result,
    run_fleet,
)
from imaging.engine.scheduler import DEFAULT_MAX_FAIL_PERCENT as DEFAULT_MAX_FAIL_PERCENT  # for the tasks
from imaging.engine.scheduler import FAILED, PULLED, SKIPPED, Job, Result, abort_rule, parse_batches, plan_waves
from imaging.engine.scheduler import OK as JOB_OK
from imaging.engine.simulate import Prediction, TimeModel, predict
from imaging.engine.timeline import prediction_record
from imaging.model.inventory import Instrument
from imaging.ops.context import Context
from imaging.ops.facts import (
    carried,
    desired_releases,
    hotfixes_blocking,
    hotfixes_to_reapply,
    instrument_record,
    interrupted,
    migrations_needed,
    running_release,
)
from imaging.ops.publish import publish
from imaging.ops.reimage import reimage_to
from imaging.ops.reimage import resume as resume_instrument
from imaging.ops.stage import not_staged, stage
from imaging.settings.instruments import templates_for, variables_dirty
from imaging.settings.render import templates_version
from imaging.state.journal import OK, RUNNING
from imaging.state.runs import new_run_id

# --- the fleet plan ------------------------------------------------------------------------------------


def hotfixes_dropped(ctx: Context, inst: Instrument, target: str) -> list[str]:
    """Hotfixes on the instrument that the target release would drop: neither included in it nor declared
    for it (from the journal and the instrument's own ledger: a reimage refuses these unless told to drop
    them), plus any listed in the instrument's own record that the release does not include."""
    rel = ctx.releases[target]
    dropped = set(hotfixes_blocking(ctx, inst, target))
    record = instrument_record(ctx, inst)
    if record:
        have = [str(h.get("id", h)) if isinstance(h, dict) else str(h) for h in record.get("hotfixes", [])]
        kept = set(hotfixes_to_reapply(ctx, inst, target))
        dropped |= {h for h in have if h not in set(rel.includes_hotfixes) and h not in kept}
    return sorted(dropped)


def dirty_settings(ctx: Context, insts: list[Instrument], allow: bool) -> InputError | None:
    """A deploy renders settings from git: uncommitted inventory files of the selection (their variables) are
    refused unless ``--allow-dirty``, which the deploy's record keeps (options) and each provenance shows."""
    if allow:
        return None
    dirty = sorted({p for inst in insts for p in variables_dirty(ctx.inventory, inst)})
    if not dirty:
        return None
    return InputError(f"the inventory has uncommitted changes the settings would be rendered from: "
                      f"{', '.join(dirty[:8])}{' ...' if len(dirty) > 8 else ''}; nothing was changed",
                      field="--allow-dirty", fix="commit them (settings are deployed from git), or pass "
                                                 "--allow-dirty: the deploy records it and every provenance says dirty")


def wrong_templates(ctx: Context, targets: dict[str, str]) -> InputError | None:
    """A release whose templates are not at its settings format cannot be rendered for any instrument: say
    so before the deploy starts rather than once per instrument."""
    for release in sorted(set(targets.values())):
        definition = ctx.releases[release]
        ref, folder = templates_for(definition)
        have = templates_version(ctx.paths.root, ref, folder)
        if have != definition.settings_version:
            return InputError(f"release {release} needs settings version {definition.settings_version}, but the "
                              f"templates in {folder} at {ref} are at version {have}; nothing was changed",
                              file=str(ctx.paths.releases / f"{release}.yaml"), field="settings_templates",
                              fix="name the templates the release was made with (a commit, or a frozen folder "
                                  "such as templates/settings-history/v4; docs/releases.md)")
    return None


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


def fleet_plan(ctx: Context, insts: list[Instrument], targets: dict[str, str], model: TimeModel) -> list[PlanRow]:
    """Per instrument: release now and after, migrations, hotfixes that would be dropped, staging, time."""
    rows = []
    staged_cache: dict[tuple[str, str], list[str] | None] = {}
    for inst in insts:
        target = targets[inst.name]
        now = running_release(ctx, inst)
        key = (target, inst.host)
        if key not in staged_cache:
            staged_cache[key] = not_staged(ctx, target, inst.host)
        missing = staged_cache[key]
        note = ""
        if interrupted(ctx, inst):
            note = "interrupted operation: resume or roll back first"
        elif now == target:
            note = "already on the release (skipped unless --force)"
        if (instrument_record(ctx, inst) or {}).get("damaged"):
            note = "; ".join(filter(None, [note, "its Var record is damaged: the reimage keeps it aside "
                                                   "(record.damaged.json) and writes a new one"]))
        carry = hotfixes_to_reapply(ctx, inst, target)
        if carry:
            note = "; ".join(filter(None, [note, "re-applies " + ", ".join(carry)]))
        rows.append(PlanRow(instrument=inst.name, host=inst.host, now=now, after=target,
                            migrations=migrations_needed(ctx, inst, ctx.releases[target]),
                            hotfixes_dropped=hotfixes_dropped(ctx, inst, target), not_staged=missing,
                            estimate_s=model.alone_s(inst.host, staged=not missing), note=note))
    return rows


def lost_hotfixes(ctx: Context, insts: list[Instrument], targets: dict[str, str],
                  drop: tuple[str, ...] = ()) -> InputError | None:
    """Why the deploy must be refused before any instrument is touched, or None: an instrument would lose a
    hotfix its target release neither includes nor is declared for and the operator did not drop
    (``--drop-hotfix``); a dropped id that no selected instrument carries is a typo and refused too."""
    carried_any: set[str] = set()
    losing: list[str] = []
    ids: set[str] = set()
    for inst in insts:
        carried_any |= set(carried(ctx, inst).hotfixes)
        blocking = hotfixes_blocking(ctx, inst, targets[inst.name], drop)
        if blocking:
            losing.append(f"{inst.name} carries {', '.join(blocking)} ({targets[inst.name]} lacks it)")
            ids |= set(blocking)
    unknown = sorted(set(drop) - carried_any)
    if unknown:
        return InputError(f"no selected instrument carries hotfix {', '.join(unknown)}; nothing was changed",
                          field="--drop-hotfix", value=",".join(drop),
                          fix="see `invoke hotfixes` for who carries what; drop only hotfixes that are carried")
    if losing:
        return InputError("the deploy would drop hotfixes: " + "; ".join(losing) + "; nothing was changed",
                          field="--release", value=",".join(sorted(set(targets.values()))),
                          fix="add the release to each hotfix's applies_to, deploy a release that includes it, "
                              f"or accept losing it with --drop-hotfix={','.join(sorted(ids))}")
    return None


@dataclass
class DeployPlan:
    """A deploy worked out before anything changes: each instrument's target (resolved once), the fleet plan
    rows, the prediction with the waves the deploy will use, and the refusal, if any."""

    release: str
    instruments: list[Instrument]
    options: Options
    model: TimeModel
    targets: dict[str, str]
    rows: list[PlanRow]
    prediction: Prediction
    refusal: InputError | None

    def check(self) -> None:
        """Raise the refusal (hotfixes the deploy would lose) before confirmation and before any change."""
        if self.refusal is not None:
            raise self.refusal


def plan_deploy(ctx: Context, insts: list[Instrument], release: str, options: Options,
                model: TimeModel | None = None) -> DeployPlan:
    """Resolve each instrument's target once and work out the plan, the prediction and the refusal."""
    model = model or TimeModel()
    targets = desired_releases(ctx, insts, release)
    return DeployPlan(release=release, instruments=insts, options=options, model=model, targets=targets,
                      rows=fleet_plan(ctx, insts, targets, model),
                      prediction=_predict(ctx, insts, targets, options, model),
                      refusal=wrong_templates(ctx, targets)
                      or lost_hotfixes(ctx, insts, targets, options.drop_hotfixes)
                      or dirty_settings(ctx, insts, options.allow_dirty))


# --- running -------------------------------------------------------------------------------------------


def _publish_all(ctx: Context, insts: list[Instrument], targets: dict[str, str]) -> None:
    """Put every target's images on its hosts' shares before threads start (the lab builds its samples
    once here)."""
    for rid, host in sorted({(targets[i.name], i.host) for i in insts}):
        publish(ctx, rid, host)


def _jobs(ctx: Context, insts: list[Instrument], model: TimeModel, targets: dict[str, str]) -> list[Job]:
    jobs = []
    for inst in insts:
        missing = not_staged(ctx, targets[inst.name], inst.host)
        jobs.append(Job(inst.name, inst.host, model.alone_s(inst.host, staged=not missing), unstaged=bool(missing)))
    return jobs


Start = Callable[[Job, Instrument, Callable[[Result], None], Callable[[StepEvent], None]], "Result | Outcome"]


def job_in_run(ctx: Context, run_id: str, progress: ProgressFn, start: Start, restored: str
               ) -> Callable[[Job, Callable[[Result], None]], Result]:
    """One instrument's job in a resumable fleet run (deploy, switch): an instrument whose operation in this
    run finished is never touched again, an interrupted one is continued (the same operation), one
    interrupted outside this run is skipped; the rest are started by ``start``."""
    def listener(ev: StepEvent) -> None:
        progress("step", ev)

    def one(job: Job, notify: Callable[[Result], None]) -> Result:
        name = job.name
        inst = ctx.inventory.instrument(name)
        op = ctx.journal.last(name)
        if op and op.batch == run_id and op.status != RUNNING:
            return Result(name, JOB_OK if op.status == OK else FAILED, op.error or "", step=None)
        stuck = interrupted(ctx, inst)
        if stuck is not None and stuck.batch == run_id:
            outcome: Result | Outcome = resume_instrument(ctx, name, listener=listener)
        elif stuck is not None:
            return Result(name, SKIPPED, f"has an interrupted {stuck.kind} ({stuck.id}) from outside "
                          "this run; resume or roll it back first")
        else:
            outcome = start(job, inst, notify, listener)
        return outcome if isinstance(outcome, Result) else outcome_result(name, outcome, restored)

    return one


def _work(ctx: Context, deploy_id: str, targets: dict[str, str], options: Options,
          progress: ProgressFn) -> Callable[[Job, Callable[[Result], None]], Result]:
    def reimage_one(job: Job, inst: Instrument, notify: Callable[[Result], None],
                    listener: Callable[[StepEvent], None]) -> Result | Outcome:
        name = job.name
        if not options.force and running_release(ctx, inst) == targets[name]:
            return Result(name, SKIPPED, f"already on {targets[name]}")
        if job.unstaged:  # this job pulls the images for its host; the scheduler holds the others
            try:
                stage(ctx, targets[name], inst.host)
            except ImagingError as exc:
                return Result(name, FAILED, f"staging on {inst.host}: {exc}", step="stage_artifact")
            notify(Result(name, PULLED, inst.host))
        have = set(carried(ctx, inst).hotfixes)
        drop = tuple(h for h in options.drop_hotfixes if h in have)
        return reimage_to(ctx, inst, targets[name], listener=listener, batch=deploy_id, drop_hotfixes=drop,
                          force=options.force, allow_dirty=options.allow_dirty)

    return job_in_run(ctx, deploy_id, progress, reimage_one, "restored to its previous release")


def _running(ctx: Context) -> Callable[[str], str | None]:
    return lambda name: running_release(ctx, ctx.inventory.instrument(name))


def run_deploy(ctx: Context, plan: DeployPlan, *, progress: ProgressFn | None = None,
               deploy_id: str | None = None) -> FleetResult:
    """Carry out a planned deploy in waves; write the record and the reports."""
    plan.check()
    insts, targets, options = plan.instruments, plan.targets, plan.options
    _publish_all(ctx, insts, targets)
    waves = plan_waves(_jobs(ctx, insts, plan.model, targets), canary=options.canary,
                       batches=parse_batches(options.batches))
    record = new_record("deploy", deploy_id or new_run_id("deploy"), [i.name for i in insts], waves, options,
                        {i.name: running_release(ctx, i) for i in insts}, release=plan.release, targets=targets,
                        prediction=prediction_record(plan.prediction.trace, plan.prediction.makespan))
    work = _work(ctx, record["id"], targets, options, progress or (lambda kind, payload: None))
    return run_fleet(ctx.fleet_folders, record, waves, limits_for(ctx.per_host_limits, options), work,
                     progress=progress, state_of=_running(ctx))


def deploy(ctx: Context, insts: list[Instrument], release: str, options: Options, *,
           model: TimeModel | None = None, progress: ProgressFn | None = None,
           deploy_id: str | None = None) -> FleetResult:
    """Plan and carry out a deploy of ``release`` to the instruments (refused first when hotfixes would be
    lost)."""
    return run_deploy(ctx, plan_deploy(ctx, insts, release, options, model), progress=progress,
                      deploy_id=deploy_id)


def resumable(ctx: Context, kind: str = "deploy") -> dict | None:
    """The newest run of ``kind`` (deploy or switch) that did not finish and whose controlling process is
    gone (hotfix runs are not resumed: each instrument's hotfix is one short operation, run again with
    ``--instruments=@failed``)."""
    guard_dir = ctx.paths.locks / FLEET_GUARDS
    for rec in reversed(ctx.runs.all(kind)):
        if rec["status"] == RUNNING and not is_live(guard_dir, rec["id"]):
            return rec
    return None


def interrupted_run(ctx: Context, kind: str, run_id: str | None) -> dict:
    """The run to resume: the one named, or the newest interrupted one of ``kind``."""
    record = ctx.runs.read(run_id) if run_id else resumable(ctx, kind)
    if record is None:
        raise ImagingError(f"no interrupted {kind} to resume (every {kind} finished or is still running)")
    if record["status"] != RUNNING:
        raise ImagingError(f"{kind} {record['id']} is {record['status']}; nothing to resume")
    return record


def resume_run(ctx: Context, record: dict, jobs: list[Job], work: Callable[[Job, Callable[[Result], None]], Result],
               options: Options, progress: ProgressFn | None) -> FleetResult:
    """Pick up an interrupted fleet run from its record and the journal: results already known are kept,
    an instrument whose operation in the run is still running is resumed by its job."""
    by_name = {j.name: j for j in jobs}
    waves = [[by_name[n] for n in w] for w in record["waves"]]
    done: dict[str, Result] = {}
    for name, r in record.get("results", {}).items():
        done[name] = Result(name, r["status"], r.get("detail", ""), r.get("step"))
    latest = {op.instrument: op for op in ctx.journal.operations(batch=record["id"])}
    for name, op in latest.items():
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
    return run_fleet(ctx.fleet_folders, record, waves, limits_for(ctx.per_host_limits, options), work,
                     progress=progress, done=done, state_of=_running(ctx))


def resume(ctx: Context, *, deploy_id: str | None = None, model: TimeModel | None = None,
           progress: ProgressFn | None = None) -> FleetResult:
    """Pick up an interrupted deploy from its record and the journal."""
    model = model or TimeModel()
    record = interrupted_run(ctx, "deploy", deploy_id)
    options = Options(**record["options"])
    insts = [ctx.inventory.instrument(n) for n in record["selection"]]
    targets = record["targets"]
    _publish_all(ctx, insts, targets)
    work = _work(ctx, record["id"], targets, options, progress or (lambda kind, payload: None))
    return resume_run(ctx, record, _jobs(ctx, insts, model, targets), work, options, progress)


# --- prediction ----------------------------------------------------------------------------------------


def staged_hosts(ctx: Context, insts: list[Instrument], targets: dict[str, str], model: TimeModel) -> set[str]:
    """The hosts a prediction treats as holding the targets' images: staged as observed, or (hosts the tool
    cannot look at) as the time model assumes."""
    staged = set()
    for h in {i.host for i in insts}:
        seen = [not_staged(ctx, targets[i.name], h) for i in insts if i.host == h]
        if all(m == [] or (m is None and model.staged) for m in seen):
            staged.add(h)
    return staged


def _predict(ctx: Context, insts: list[Instrument], targets: dict[str, str], options: Options, model: TimeModel,
             failing: set[str] | None = None) -> Prediction:
    staged = staged_hosts(ctx, insts, targets, model)
    jobs = [Job(i.name, i.host, model.alone_s(i.host, staged=i.host in staged), unstaged=i.host not in staged)
            for i in insts]
    waves = plan_waves(jobs, canary=options.canary, batches=parse_batches(options.batches))
    return predict(waves, model, limits_for(ctx.per_host_limits, options), staged_hosts=staged, failing=failing)


def simulate(ctx: Context, insts: list[Instrument], release: str, options: Options, model: TimeModel, *,
             failing: set[str] | None = None) -> Prediction:
    """Predict the deploy with the same waves and limits it would use, on a virtual clock. Touches nothing."""
    return _predict(ctx, insts, desired_releases(ctx, insts, release), options, model, failing)


def abort_rule_of(names: list[str], options: Options) -> str:
    """The rule a fleet run (deploy, switch, hotfix) stops by, for its plan to print. ``names`` is the
    selection in wave order: its first is the canary unless the run has none. The default share is
    ``DEFAULT_MAX_FAIL_PERCENT``."""
    canary = (options.canary or names[0]) if names and options.canary != "" else None
    return abort_rule(options.max_fail_percent, canary)
