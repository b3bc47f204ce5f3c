"""Prepare the next generation beside a running instrument, days before a shutdown: the images staged, the
new OS and Apps children made, the next Settings disk rendered and written, the settings migrations
committed on the instrument's branch. Nothing of this touches the running VM; ``ops.switch`` later does
only the downtime part. What a switch must re-check (is the prepared generation still what would be
prepared now?) is answered here too, by ``staleness``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imaging.core.errors import ImagingError, InputError
from imaging.core.stamps import new_op_id
from imaging.engine.executor import Listener, Outcome, StepEvent
from imaging.engine.runner import FleetResult, Options, ProgressFn, limits_for, new_record, outcome_result, run_fleet
from imaging.engine.scheduler import SKIPPED, Job, Result, parse_batches, plan_waves
from imaging.engine.simulate import Prediction, TimeModel, predict
from imaging.engine.timeline import prediction_record
from imaging.model.inventory import Instrument
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.deploy import staged_hosts
from imaging.ops.facts import (
    Prepared,
    desired_releases,
    hotfixes_to_reapply,
    observe,
    prepared,
    refuse_dropped_hotfixes,
    refuse_if_interrupted,
    running_release,
    setter_op,
)
from imaging.ops.publish import publish
from imaging.ops.reimage import plan_phase, refuse_same_release, settings_for
from imaging.ops.stage import stage_steps
from imaging.state.journal import OK
from imaging.state.runs import new_run_id


def prepare_command(inst: Instrument, release: str) -> str:
    return f"`invoke prepare --release={release} --instruments={inst.name}`"


def staleness(ctx: Context, inst: Instrument, p: Prepared) -> list[str]:
    """Why the prepared generation is no longer what a prepare would make now (empty: it still is)."""
    reasons = []
    rel = ctx.releases.get(p.release)
    if rel is None or rel.revoked:
        reasons.append(f"release {p.release} is " + (f"revoked ({rel.revoked.reason})" if rel else "unknown"))
    now = setter_op(ctx, inst)
    if (now.id if now else None) != p.based_on:
        reasons.append(f"{inst.name} was reimaged or rolled back since it was prepared (operation "
                       f"{now.id if now else 'none'})")
    after = False
    for op in ctx.journal.operations(instrument=inst.name):
        if op.id == p.op.id:
            after = True
        elif after and op.status == OK and op.kind in ("hotfix", "hotfix-revert"):
            hid = (op.rollback_point or {}).get("hotfix", "?")
            reasons.append(f"hotfix {hid} was {'applied' if op.kind == 'hotfix' else 'reverted'} since "
                           f"(operation {op.id})")
    if rel is not None and not rel.revoked:
        try:
            rs = settings_for(ctx, inst, p.release, observe(ctx, inst), dry_run=True)
        except ImagingError as exc:  # drift on the running instrument since, or a settings tree that broke
            reasons.append(f"its settings cannot be rendered as prepared: {exc}")
        else:
            if rs.rendered.sha256 != (p.op.rollback_point or {}).get("settings_digest"):
                was = (p.op.rollback_point or {}).get("settings_commit") or "?"
                reasons.append(f"the settings changed since it was prepared (commit {str(was)[:10]} -> "
                               f"{str(rs.rendered.provenance.get('commit') or '?')[:10]})")
    return reasons


@dataclass
class Prepare:
    """One instrument's prepare: done now (``outcome``), or nothing to do (``note`` says why)."""

    instrument: str
    release: str
    outcome: Outcome | None
    note: str = ""


def prepare(ctx: Context, inst: Instrument, target: str, *, listener: Listener | None = None,
            batch: str | None = None, drop_hotfixes: tuple[str, ...] = (), force: bool = False) -> Prepare:
    """Make ``target``'s next generation beside the running instrument. Re-running it is a no-op; preparing
    another release (or a stale preparation) replaces the prepared generation, never the running one."""
    refuse_if_interrupted(ctx, inst)
    refuse_same_release(ctx, inst, target, force)
    refuse_dropped_hotfixes(ctx, inst, target, drop_hotfixes)
    old = prepared(ctx, inst)
    if old is not None and old.release == target and not staleness(ctx, inst, old):
        return Prepare(inst.name, target, None, f"already prepared ({old.generation}, operation {old.op.id})")
    carry = hotfixes_to_reapply(ctx, inst, target, drop_hotfixes)
    op_id = new_op_id()
    plan = plan_phase(ctx, inst, target, op_id=op_id, allow_dirty=False, dry_run=False, capture_drift=False,
                      settings_ref=None, hotfixes=tuple(ctx.releases[target].includes_hotfixes) + tuple(carry),
                      phase="prepare")
    publish(ctx, target, inst.host)
    for s in stage_steps(ctx, target, inst.host):
        res = ctx.providers.run(s)
        if listener and res.get("changed"):
            listener(StepEvent(inst.name, "stage", 0, 0, s, ok=True, result=res))
    outcome = ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)
    if outcome.ok and old is not None:
        discard(ctx, inst, old)
    return Prepare(inst.name, target, outcome)


def discard(ctx: Context, inst: Instrument, p: Prepared) -> list[str]:
    """Remove a superseded prepared generation's disks (never one that is attached: the provider refuses)."""
    attached = set(observe(ctx, inst).disks.values())
    gone = []
    for role, path in p.new.items():
        if path in attached:
            continue
        res = ctx.providers.run(Step("delete_disk", inst.host, {"path": path, "role": role},
                                     f"delete the superseded prepared {role} disk"))
        if res.get("changed"):
            gone.append(path)
    return gone


# --- many instruments ---------------------------------------------------------------------------------


def prepare_fleet(ctx: Context, insts: list[Instrument], release: str, options: Options, *,
                  progress: ProgressFn | None = None, model: TimeModel | None = None) -> FleetResult:
    """Prepare every instrument of the selection: one wave (nothing is down), the hosts' limits, a record
    and reports like every fleet run (with the time model's prediction, drawn under the real bars)."""
    forecast = simulate(ctx, insts, release, options, model or TimeModel())
    targets = desired_releases(ctx, insts, release)
    for rid, host in sorted({(targets[i.name], i.host) for i in insts}):
        publish(ctx, rid, host)
    jobs = [Job(i.name, i.host, 60.0) for i in insts]
    waves = plan_waves(jobs, canary="", batches=parse_batches("100%"))
    record = new_record("prepare", new_run_id("prepare"), [i.name for i in insts], waves, options,
                        {i.name: running_release(ctx, i) for i in insts}, release=release, targets=targets,
                        prediction=prediction_record(forecast.trace, forecast.makespan))
    emit = progress or (lambda kind, payload: None)

    def one(job: Job, notify: Callable[[Result], None]) -> Result:
        inst = ctx.inventory.instrument(job.name)
        out = prepare(ctx, inst, targets[job.name], listener=lambda ev: emit("step", ev), batch=record["id"],
                      drop_hotfixes=options.drop_hotfixes, force=options.force)
        if out.outcome is None:
            return Result(job.name, SKIPPED, out.note)
        return outcome_result(job.name, out.outcome, "its partial generation was removed; the instrument was "
                                                     "never touched")

    return run_fleet(ctx.fleet_folders, record, waves, limits_for(ctx.per_host_limits, options), one,
                     progress=progress, state_of=lambda name: _prepared_release(ctx, name))


def _prepared_release(ctx: Context, name: str) -> str | None:
    p = prepared(ctx, ctx.inventory.instrument(name))
    return p.release if p else None


def refuse_unprepared(ctx: Context, inst: Instrument) -> Prepared:
    """The prepared generation a switch may use, or the refusal that names the command to run."""
    p = prepared(ctx, inst)
    if p is None:
        try:
            want = desired_releases(ctx, [inst])[inst.name]
        except ImagingError:
            want = "<release>"
        raise InputError(f"{inst.name} has no prepared generation to switch to (never prepared, or already "
                         "switched to)", field="--instruments", value=inst.name,
                         fix=f"prepare it first: {prepare_command(inst, want)}")
    reasons = staleness(ctx, inst, p)
    if reasons:
        raise InputError(f"{inst.name}'s prepared generation {p.generation} is no longer what would be prepared "
                         "now: " + "; ".join(reasons) + "; nothing was changed", field="--instruments",
                         value=inst.name, fix=f"refresh it with {prepare_command(inst, p.release)}")
    return p



def simulate(ctx: Context, insts: list[Instrument], release: str, options: Options, model: TimeModel) -> Prediction:
    """Predict the preparation: no downtime, bounded by the share and the hosts' disks (staging) and the
    hosts' limits. Touches nothing."""
    targets = desired_releases(ctx, insts, release)
    staged = staged_hosts(ctx, insts, targets, model)
    jobs = [Job(i.name, i.host, model.prepare_s(i.host, staged=i.host in staged), unstaged=i.host not in staged)
            for i in insts]
    waves = plan_waves(jobs, canary="", batches=parse_batches("100%"))
    return predict(waves, model, limits_for(ctx.per_host_limits, options), staged_hosts=staged, phase="prepare")
