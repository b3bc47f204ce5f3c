"""Hotfix, revert, carry-over across releases and rollback of the last operation, wired from the pure parts.

What an instrument carries is derived from the journal, generation by generation (a reimage starts a new
Apps generation with no hotfix, a hotfix adds one to the current generation, a revert removes it, a
rollback returns to the previous generation and what it carried). The ledger on the Var disk is kept the
same way, keyed by generation, so both always agree after a rollback.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging.core.errors import ImagingError, InputError
from imaging.engine.executor import Listener, Outcome, StepEvent
from imaging.engine.scheduler import SKIPPED, Job, Result, parse_batches, plan_waves
from imaging.model import layout
from imaging.model.hotfixes import Hotfix, Package, open_package, package_tar
from imaging.model.inventory import SLOTS, Instrument
from imaging.model.plan import Plan
from imaging.model.steps import Step
from imaging.plans.hotfix import HotfixInputs, RollbackInputs, plan_hotfix, plan_revert_hotfix, plan_rollback
from imaging.state.journal import OK, Operation, who

if TYPE_CHECKING:  # operations (and fleet, through it) import this module lazily
    from imaging.ops import deploy as fleet
    from imaging.ops.reimage import Context

ALREADY = "already-applied"
_PUBLISH = threading.Lock()


# --- what an instrument carries, from the journal --------------------------------------------------


@dataclass
class Carried:
    generation: str | None
    hotfixes: dict[str, dict[str, Any]]  # id -> manifest (as a dict) in the current generation
    by_generation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def carried(ctx: Context, inst: Instrument) -> Carried:
    gens: dict[str, dict[str, dict[str, Any]]] = {}
    current: str | None = None
    for op in ctx.journal.operations(instrument=inst.name):
        rp = op.rollback_point or {}
        if op.status != OK:
            continue
        if op.kind == "reimage" and rp.get("generation"):
            current = rp["generation"]
            gens[current] = {}
        elif op.kind == "rollback":
            current = rp.get("generation")
        elif op.kind == "hotfix" and rp.get("generation"):
            gens.setdefault(rp["generation"], {})[rp["hotfix"]] = rp["manifest"]
        elif op.kind == "hotfix-revert" and rp.get("generation"):
            gens.setdefault(rp["generation"], {}).pop(rp["hotfix"], None)
    return Carried(generation=current, hotfixes=dict(gens.get(current or "", {})), by_generation=gens)


def known_hotfix(ctx: Context, hotfix_id: str) -> Hotfix | None:
    """The manifest of a hotfix any instrument was ever given (from the journal)."""
    for op in reversed(ctx.journal.operations(kind="hotfix")):
        rp = op.rollback_point or {}
        if rp.get("hotfix") == hotfix_id and rp.get("manifest"):
            return Hotfix.from_dict(rp["manifest"])
    return None


def _setter_op(ctx: Context, inst: Instrument) -> Operation | None:
    """The finished operation that put the running OS/Apps/Settings disks in place (reimage or rollback)."""
    return ctx.journal.last(inst.name, kinds=("reimage", "rollback"), statuses=(OK,))


def _plan_step(op: Operation, action: str) -> dict[str, Any] | None:
    found = [s for s in op.plan if s["action"] == action]
    return found[-1]["inputs"] if found else None


# --- packages ----------------------------------------------------------------------------------------


def load_package(ctx: Context, path: Path) -> Package:
    scratch = ctx.paths.state / "hotfixes" / "unpacked" / uuid.uuid4().hex[:12]
    return open_package(Path(path), releases=ctx.releases, scratch=scratch)


def store_package(ctx: Context, pkg: Package) -> tuple[str, str]:
    """Keep the package in the artifact store (kind ``hotfix``); one id, one content, forever."""
    name = f"hotfix-{pkg.hotfix.id}"
    data = package_tar(pkg)
    from imaging.core.hashing import sha256_bytes

    sha = sha256_bytes(data)
    if ctx.store.exists(name):
        have = ctx.store.get(name).sha256
        if have != sha:
            raise InputError(f"hotfix {pkg.hotfix.id} was already stored with other content (sha256 {have})",
                             file=pkg.source, field="id", value=pkg.hotfix.id,
                             fix="give a changed hotfix a new id")
        return name, sha
    with tempfile.TemporaryDirectory(prefix="imaging-hotfix-") as tmp:
        tar = Path(tmp) / f"{name}.tar"
        tar.write_bytes(data)
        man = ctx.store.add(tar, name=name, kind="hotfix", source=pkg.source, suffix=".tar")
    return name, man.sha256


def stage_package(ctx: Context, name: str, sha: str, host_name: str) -> str:
    """Put the package on the host like an image: the host pulls it from the share and verifies it."""
    host = ctx.inventory.hosts[host_name]
    share = layout.share_path(host, name, sha, ".tar")
    dest = layout.hotfix_stage_path(host, name, sha)
    if host.provider == "lab":
        with _PUBLISH:  # hosts share one share folder: publish one copy at a time
            ctx.store.stage(name, ctx.providers.lab.path(host_name, share).parent)
    ctx.providers.run(Step("stage_artifact", host_name, {"name": name, "sha256": sha, "share_path": share,
                                                          "dest_path": dest},
                           f"stage {name} on {host_name} (pull from the share, verify sha256)"))
    return dest


# --- hotfix and revert on one instrument ---------------------------------------------------------------


def _inputs(ctx: Context, inst: Instrument, hotfix: Hotfix, package_path: str | None, op_id: str
            ) -> HotfixInputs:
    from imaging.ops.reimage import running_release, stamp

    release = running_release(ctx, inst)
    state = carried(ctx, inst)
    setter = _setter_op(ctx, inst)
    health = _plan_step(setter, "health_check") if setter else None
    if release is None or state.generation is None or health is None:
        raise InputError(f"{inst.name} has no release recorded by this tool", field="instruments",
                         value=inst.name, fix=f"reimage it first (`invoke reimage --instrument={inst.name}`)")
    return HotfixInputs(inst=inst, host=ctx.inventory.host_of(inst), hotfix=hotfix, release=release,
                        apps_generation=state.generation, package_path=package_path, health=health,
                        op_id=op_id, owner=who(), stamp=stamp())


def check_applies(ctx: Context, insts: Iterable[Instrument], hotfix: Hotfix, source: str) -> None:
    """Refuse, before anything changes, when any instrument runs a release the hotfix does not apply to."""
    from imaging.ops.reimage import refuse_if_interrupted, running_release

    wrong = []
    for inst in insts:
        refuse_if_interrupted(ctx, inst)
        rel = running_release(ctx, inst)
        if rel is None or not hotfix.applies(rel):
            wrong.append(f"{inst.name} runs {rel or 'no recorded release'}")
    if wrong:
        raise InputError(f"hotfix {hotfix.id} applies to {', '.join(hotfix.applies_to)} only; "
                         + "; ".join(wrong), file=source, field="applies_to",
                         fix="choose instruments that run one of those releases, or extend applies_to")


def plan_for_hotfix(ctx: Context, name: str, pkg_hotfix: Hotfix, package_path: str, op_id: str) -> Plan:
    inst = ctx.inventory.instrument(name)
    return plan_hotfix(_inputs(ctx, inst, pkg_hotfix, package_path, op_id))


def hotfix_one(ctx: Context, name: str, hotfix: Hotfix, artifact: tuple[str, str], *,
               listener: Listener | None = None, batch: str | None = None) -> Outcome:
    """Apply a stored hotfix to one instrument; a no-op when the instrument already carries it."""
    from imaging.ops.reimage import new_op_id

    inst = ctx.inventory.instrument(name)
    if hotfix.id in carried(ctx, inst).hotfixes:
        return Outcome(op_id="", instrument=inst.name, ok=True, status=ALREADY)
    package_path = stage_package(ctx, *artifact, inst.host)
    op_id = new_op_id()
    plan = plan_hotfix(_inputs(ctx, inst, hotfix, package_path, op_id))
    return ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)


def revert_one(ctx: Context, name: str, hotfix_id: str, *, listener: Listener | None = None,
               batch: str | None = None) -> Outcome:
    from imaging.ops.reimage import new_op_id, refuse_if_interrupted

    inst = ctx.inventory.instrument(name)
    refuse_if_interrupted(ctx, inst)
    have = carried(ctx, inst).hotfixes
    if hotfix_id not in have:
        raise InputError(f"{inst.name} does not carry hotfix {hotfix_id}", field="revert", value=hotfix_id,
                         fix=f"see `invoke hotfixes`; it carries {', '.join(sorted(have)) or 'none'}")
    op_id = new_op_id()
    plan = plan_revert_hotfix(_inputs(ctx, inst, Hotfix.from_dict(have[hotfix_id]), None, op_id))
    return ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)


# --- many instruments --------------------------------------------------------------------------------


def _fleet_run(ctx: Context, kind: str, insts: list[Instrument], hotfix_id: str, options: fleet.Options | None,
               progress: fleet.ProgressFn | None,
               one: Callable[[str, Listener, str], Outcome]) -> fleet.FleetResult:
    """Run ``one(name, listener, batch)`` per instrument in waves with the deploy engine (canary, batches,
    limits, max-fail-percent, live progress, record and reports of kind ``hotfix`` or ``revert``)."""
    from imaging.ops import deploy as fleet

    options = options or fleet.Options()
    emit = progress or (lambda kind, payload: None)
    waves = plan_waves([Job(i.name, i.host) for i in insts], canary=options.canary,
                       batches=parse_batches(options.batches))
    record = fleet.new_record(kind, fleet.new_deploy_id(kind), insts, waves, options,
                              {i.name: sorted(carried(ctx, i).hotfixes) for i in insts}, hotfix=hotfix_id)
    outcomes: dict[str, Outcome | BaseException] = {}
    restored = "its files were restored" if kind == "hotfix" else "its hotfixed files were put back"

    def listener(ev: StepEvent) -> None:
        emit("step", ev)

    def run_one(job: Job) -> Result:
        try:
            out = one(job.name, listener, record["id"])
        except Exception as exc:
            outcomes[job.name] = exc
            raise
        outcomes[job.name] = out
        if out.status == ALREADY:
            return Result(job.name, SKIPPED, f"already carries {hotfix_id}")
        return fleet.outcome_result(job.name, out, restored)

    result = fleet.run_fleet(ctx, record, waves, fleet.limits_for(ctx, options),
                             lambda job, notify: fleet.guarded(ctx, job.name, lambda: run_one(job)),
                             progress=progress, state_of=lambda inst: sorted(carried(ctx, inst).hotfixes))
    result.outcomes = outcomes
    return result


def hotfix(ctx: Context, names: list[str], patch: Path, options: fleet.Options | None = None, *,
           progress: fleet.ProgressFn | None = None) -> fleet.FleetResult:
    """Check the package and every instrument first; then hotfix them in waves like a deploy. A failure on
    one instrument restores that instrument's files; ``result.outcomes`` has each instrument's outcome."""
    pkg = load_package(ctx, patch)
    insts = [ctx.inventory.instrument(n) for n in names]
    check_applies(ctx, insts, pkg.hotfix, pkg.source)
    artifact = store_package(ctx, pkg)
    return _fleet_run(ctx, "hotfix", insts, pkg.hotfix.id, options, progress,
                      lambda n, listener, batch: hotfix_one(ctx, n, pkg.hotfix, artifact, listener=listener,
                                                            batch=batch))


def check_carries(ctx: Context, insts: Iterable[Instrument], hotfix_id: str) -> None:
    """Refuse a revert, before anything changes, when an instrument does not carry the hotfix."""
    missing = [i.name for i in insts if hotfix_id not in carried(ctx, i).hotfixes]
    if missing:
        raise InputError(f"{', '.join(missing)} do not carry hotfix {hotfix_id}", field="revert", value=hotfix_id,
                         fix="see `invoke hotfixes` for who carries what")


def revert(ctx: Context, names: list[str], hotfix_id: str, options: fleet.Options | None = None, *,
           progress: fleet.ProgressFn | None = None) -> fleet.FleetResult:
    """Revert a hotfix on instruments that carry it, in waves like a deploy (checked for all first)."""
    insts = [ctx.inventory.instrument(n) for n in names]
    check_carries(ctx, insts, hotfix_id)
    return _fleet_run(ctx, "revert", insts, hotfix_id, options, progress,
                      lambda n, listener, batch: revert_one(ctx, n, hotfix_id, listener=listener, batch=batch))


def list_hotfixes(ctx: Context) -> dict[str, dict[str, dict[str, Any]]]:
    """instrument -> hotfix id -> manifest, for every instrument that carries at least one."""
    out = {}
    for inst in ctx.inventory.instruments.values():
        have = carried(ctx, inst).hotfixes
        if have:
            out[inst.name] = have
    return out


# --- carry-over across releases ----------------------------------------------------------------------


def hotfixes_blocking(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()) -> list[str]:
    """The hotfixes the instrument carries that ``target_release`` neither includes nor is declared for."""
    rel = ctx.releases[target_release]
    dropped = set(drop)
    return sorted(hid for hid, man in carried(ctx, inst).hotfixes.items()
                  if hid not in rel.includes_hotfixes and hid not in dropped
                  and target_release not in man["applies_to"])


def hotfixes_to_reapply(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()
                        ) -> list[str]:
    rel = ctx.releases[target_release]
    dropped = set(drop)
    return sorted(hid for hid, man in carried(ctx, inst).hotfixes.items()
                  if hid not in rel.includes_hotfixes and hid not in dropped and target_release in man["applies_to"])


def refuse_dropped_hotfixes(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()
                            ) -> None:
    drop = list(drop)
    have = carried(ctx, inst).hotfixes
    unknown = [d for d in drop if d not in have]
    if unknown:
        raise InputError(f"{inst.name} does not carry hotfix {', '.join(unknown)}", field="drop-hotfix",
                         value=",".join(unknown), fix=f"it carries {', '.join(sorted(have)) or 'none'}")
    blocking = hotfixes_blocking(ctx, inst, target_release, drop)
    if blocking:
        ids = ", ".join(blocking)
        raise InputError(
            f"{inst.name} carries hotfix {ids}, which release {target_release} does not include and which is "
            f"not declared for {target_release}; nothing was changed", field="release", value=target_release,
            fix=f"add {target_release} to the hotfix's applies_to, choose a release that includes it, or give "
                + " ".join(f"--drop-hotfix={h}" for h in blocking))


CARRY = "carry-"  # batch prefix of hotfixes re-applied after a reimage: they belong to that reimage


def reapply_after_reimage(ctx: Context, inst: Instrument, ids: list[str], *, listener: Listener | None = None,
                          reimage_op: str = "") -> dict[str, Outcome]:
    """Put declared hotfixes back on the new Apps generation, from the packages kept in the store."""
    out = {}
    for hid in ids:
        try:
            hf = known_hotfix(ctx, hid)
            if hf is None:
                raise ImagingError(f"hotfix {hid} has no manifest in the journal; apply it with `invoke hotfix`")
            name = f"hotfix-{hid}"
            out[hid] = hotfix_one(ctx, inst.name, hf, (name, ctx.store.get(name).sha256), listener=listener,
                                  batch=CARRY + reimage_op)
        except ImagingError as exc:  # the reimage stands; the caller reports which hotfix is missing
            out[hid] = Outcome(op_id="", instrument=inst.name, ok=False, status="failed", error=str(exc))
    return out


# --- rollback of the last finished operation, and releases marked bad ---------------------------------


def _bad_file(ctx: Context) -> Path:
    return ctx.paths.state / "bad-releases.json"


def bad_releases(ctx: Context, inst_name: str) -> dict[str, dict[str, Any]]:
    f = _bad_file(ctx)
    doc = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    return doc.get(inst_name, {})


def mark_bad(ctx: Context, inst_name: str, release: str, *, op_id: str, reason: str) -> None:
    from imaging.ops.reimage import stamp
    from imaging.providers.lab.fs import write_json

    f = _bad_file(ctx)
    doc = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    doc.setdefault(inst_name, {})[release] = {"when": stamp(), "operation": op_id, "who": who(),
                                               "reason": reason}
    write_json(f, doc)


def last_operation(ctx: Context, inst: Instrument) -> Operation | None:
    """The last finished operation that changed the instrument (reimage, hotfix, revert or rollback).

    Hotfixes re-applied right after a reimage are part of that reimage: rolling back returns past both."""
    ops = [o for o in ctx.journal.operations(instrument=inst.name)
           if o.status == OK and o.kind in ("reimage", "hotfix", "hotfix-revert", "rollback")
           and not (o.batch or "").startswith(CARRY)]
    return ops[-1] if ops else None


def plan_for_rollback(ctx: Context, name: str, *, op_id: str | None = None) -> Plan:
    """The plan that undoes the last finished operation: a revert for a hotfix, the previous disks for a
    reimage. Reads only."""
    from imaging.ops.reimage import new_op_id, observe

    inst = ctx.inventory.instrument(name)
    op_id = op_id or new_op_id()
    last = last_operation(ctx, inst)
    if last is None:
        raise ImagingError(f"{inst.name} has no finished operation to roll back")
    rp = last.rollback_point or {}
    if last.kind == "hotfix":
        hf = Hotfix.from_dict(rp["manifest"])
        return plan_revert_hotfix(_inputs(ctx, inst, hf, None, op_id))
    if last.kind != "reimage":
        raise ImagingError(f"the last operation on {inst.name} was a {last.kind} ({last.id}); there is no "
                           f"earlier generation to return to by rollback; reimage to go forward")
    prev = {int(k): v for k, v in (rp.get("disks") or {}).items() if int(k) in (SLOTS["os"], SLOTS["apps"],
                                                                                  SLOTS["settings"])}
    if SLOTS["os"] not in prev or SLOTS["apps"] not in prev:
        raise ImagingError(f"{inst.name} had no previous OS and Apps disks before {last.id}: nothing to return to")
    setter = None
    for op in ctx.journal.operations(instrument=inst.name, kind="reimage"):
        if op.status == OK and (op.rollback_point or {}).get("new", {}).get("os") == prev[SLOTS["os"]]:
            setter = op
    if setter is None:
        raise ImagingError(f"the previous disks of {inst.name} ({prev[SLOTS['os']]}) were not made by a recorded "
                           "reimage; roll back by hand")
    health = _plan_step(setter, "health_check")
    record = _plan_step(setter, "write_record")
    assert health is not None and record is not None
    state = carried(ctx, inst)
    prev_gen = setter.rollback_point["generation"]
    notes = [f"returns {inst.name} to {setter.to_release} (generation {prev_gen}), as before {last.id}",
             f"{last.to_release} will be marked bad for {inst.name}: nothing chooses it again by default",
             "Var and Data stay attached and untouched"]
    if state.by_generation.get(prev_gen):
        notes.append("hotfixes carried again: " + ", ".join(sorted(state.by_generation[prev_gen])))
    return plan_rollback(RollbackInputs(
        inst=inst, host=ctx.inventory.host_of(inst), observed=observe(ctx, inst), previous_disks=prev,
        previous_power=str(rp.get("power", "Running")), previous_release=setter.to_release or "",
        previous_generation=prev_gen, rolled_away=last.to_release or "", health=health,
        record={**record["record"], "hotfixes": sorted(state.by_generation.get(prev_gen, {}))},
        undone_op=last.id, op_id=op_id, owner=who(), notes=notes))


def rollback_last(ctx: Context, name: str, *, listener: Listener | None = None) -> Outcome:
    from imaging.ops.reimage import new_op_id, refuse_if_interrupted

    inst = ctx.inventory.instrument(name)
    refuse_if_interrupted(ctx, inst)
    op_id = new_op_id()
    plan = plan_for_rollback(ctx, name, op_id=op_id)
    outcome = ctx.executor(listener).execute(plan, op_id=op_id)
    if outcome.ok and plan.kind == "rollback" and plan.from_release:
        mark_bad(ctx, inst.name, plan.from_release, op_id=op_id, reason=f"rolled back by {who()}")
        restore_settings_branch(ctx, inst, plan.rollback_point.get("undoes"))
    return outcome


def restore_settings_branch(ctx: Context, inst: Instrument, undone_op: str | None) -> str | None:
    """The previous Settings disk is back; put the instrument's settings branch (if there is a settings
    repository) back to where it was before the undone reimage migrated it, so git and the disk agree."""
    from imaging.settings.instruments import rollback_settings

    if not undone_op:
        return None
    before = (ctx.journal.operation(undone_op).rollback_point or {}).get("settings_before_commit")
    return rollback_settings(ctx.inventory, inst, before)
