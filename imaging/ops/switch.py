"""Switch instruments to their prepared generation: the downtime part of a deploy only (stop, back up Var,
swap the OS/Apps/Settings disks to the prepared ones, start, configure, check, record), in the deploy's
waves, resumable. ``--to=previous`` switches back to what ran before (a rollback, as a fleet run).

The switch is a reimage operation in the journal (kind ``reimage``) whose disk-making steps were done by
its prepare (``rollback_point.prepared``), so resume, rollback, hotfix carry-over and retention treat it
exactly like a reimage.
"""

from __future__ import annotations

from collections.abc import Callable

from imaging.core.errors import InputError, ValidationFailed
from imaging.core.stamps import new_op_id
from imaging.engine.executor import Listener, Outcome, StepEvent
from imaging.engine.runner import FleetResult, Options, ProgressFn, limits_for, new_record, outcome_result, run_fleet
from imaging.engine.scheduler import Job, Result, parse_batches, plan_waves
from imaging.engine.simulate import Prediction, TimeModel, predict
from imaging.engine.timeline import prediction_record
from imaging.model.inventory import Instrument
from imaging.ops.context import Context
from imaging.ops.deploy import interrupted_run, job_in_run, resume_run
from imaging.ops.facts import hotfixes_to_reapply, refuse_if_interrupted, running_release
from imaging.ops.prepare import refuse_unprepared
from imaging.ops.reimage import after_reimage, plan_phase
from imaging.ops.rollback import rollback_last
from imaging.state.runs import new_run_id

TO = ("prepared", "previous")
SWITCH_PARALLEL = 16  # a switch's default --parallel: the hosts' max_concurrent is what limits it (see docs)


def switch(ctx: Context, inst: Instrument, *, listener: Listener | None = None, batch: str | None = None
           ) -> Outcome:
    """Switch one instrument to its prepared generation; a failure is undone to exactly what ran before."""
    refuse_if_interrupted(ctx, inst)
    p = refuse_unprepared(ctx, inst)
    carry = hotfixes_to_reapply(ctx, inst, p.release)
    op_id = new_op_id()
    plan = plan_phase(ctx, inst, p.release, op_id=op_id, allow_dirty=False, dry_run=False, capture_drift=False,
                      settings_ref=None, hotfixes=tuple(ctx.releases[p.release].includes_hotfixes) + tuple(carry),
                      phase="switch", generation=p.generation, prepared_by=p.op.id)
    outcome = ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)
    if outcome.ok:
        after_reimage(ctx, inst, outcome, carry, listener)
    return outcome


def check_switchable(ctx: Context, insts: list[Instrument], to: str) -> dict[str, str]:
    """Each instrument's prepared release, or every refusal at once (never prepared, stale) before anything
    changes. ``to=previous`` needs nothing prepared."""
    if to not in TO:
        raise InputError("unknown switch target", field="--to", value=to,
                         fix="use --to=prepared or --to=previous (or legacy/current for an adopted instrument)")
    if to == "previous":
        return {}
    targets, problems = {}, []
    for inst in insts:
        try:
            targets[inst.name] = refuse_unprepared(ctx, inst).release
        except InputError as exc:
            problems.append(exc)
    if problems:
        raise ValidationFailed(problems)
    return targets


def switch_jobs(ctx: Context, insts: list[Instrument], model: TimeModel) -> list[Job]:
    return [Job(i.name, i.host, model.switch_s(i.host)) for i in insts]


def switch_fleet(ctx: Context, insts: list[Instrument], options: Options, *, to: str = "prepared",
                 model: TimeModel | None = None, progress: ProgressFn | None = None,
                 run_id: str | None = None) -> FleetResult:
    """Switch the selection in waves (canary, batches, host and global limits, max-fail), with a record and
    reports; refused as a whole, before any change, when an instrument is not ready."""
    model = model or TimeModel()
    targets = check_switchable(ctx, insts, to)
    waves = plan_waves(switch_jobs(ctx, insts, model), canary=options.canary, batches=parse_batches(options.batches))
    forecast = predict(waves, model, limits_for(ctx.per_host_limits, options), phase="switch")
    record = new_record("switch", run_id or new_run_id("switch"), [i.name for i in insts], waves, options,
                        {i.name: running_release(ctx, i) for i in insts}, targets=targets, to=to,
                        prediction=prediction_record(forecast.trace, forecast.makespan))
    work = _work(ctx, record["id"], to, progress or (lambda kind, payload: None))
    return run_fleet(ctx.fleet_folders, record, waves, limits_for(ctx.per_host_limits, options), work,
                     progress=progress, state_of=lambda name: running_release(ctx, ctx.inventory.instrument(name)))


def _work(ctx: Context, run_id: str, to: str, progress: ProgressFn) -> Callable[[Job, Callable[[Result], None]],
                                                                                  Result]:
    def start(job: Job, inst: Instrument, notify: Callable[[Result], None],
              listener: Callable[[StepEvent], None]) -> Result | Outcome:
        if to == "previous":
            out = rollback_last(ctx, inst.name, listener=listener)
            return outcome_result(inst.name, out, "left on the generation it ran")
        return switch(ctx, inst, listener=listener, batch=run_id)

    return job_in_run(ctx, run_id, progress, start, "restored to what it ran before")


def resume(ctx: Context, *, run_id: str | None = None, model: TimeModel | None = None,
           progress: ProgressFn | None = None) -> FleetResult:
    """Pick up an interrupted switch: finished instruments are never switched again, the one that was
    running is resumed, the rest are switched."""
    record = interrupted_run(ctx, "switch", run_id)
    options = Options(**record["options"])
    insts = [ctx.inventory.instrument(n) for n in record["selection"]]
    work = _work(ctx, record["id"], record.get("to", "prepared"), progress or (lambda kind, payload: None))
    return resume_run(ctx, record, switch_jobs(ctx, insts, model or TimeModel()), work, options, progress)


def simulate(ctx: Context, insts: list[Instrument], options: Options, model: TimeModel) -> Prediction:
    """Predict the switch window and each instrument's downtime with the waves and limits the switch would use
    (the instruments need not be prepared yet: this is how a shutdown is planned). Touches nothing."""
    waves = plan_waves(switch_jobs(ctx, insts, model), canary=options.canary, batches=parse_batches(options.batches))
    return predict(waves, model, limits_for(ctx.per_host_limits, options), phase="switch")
