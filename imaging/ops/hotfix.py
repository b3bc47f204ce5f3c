"""Hotfixes: a small, recorded, reversible patch to the Apps volume of running instruments, in waves.

What an instrument carries is derived from the journal (``facts.carried``); the ledger on the Var disk is
kept the same way, keyed by Apps generation, so both agree after a rollback. A reimage re-applies the
hotfixes declared for its target release through ``reapply_after_reimage``.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_bytes
from imaging.core.stamps import new_op_id, stamp, who
from imaging.engine.executor import Listener, Outcome, StepEvent
from imaging.engine.runner import FleetResult, Options, ProgressFn, limits_for, new_record, outcome_result, run_fleet
from imaging.engine.scheduler import SKIPPED, Job, Result, parse_batches, plan_waves
from imaging.model import layout
from imaging.model.hotfixes import Hotfix, Package, open_package, package_tar
from imaging.model.inventory import Instrument
from imaging.model.plan import Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import (
    CARRY,
    carried,
    health_now,
    known_hotfix,
    refuse_if_interrupted,
    running_release,
)
from imaging.ops.publish import to_share
from imaging.plans.hotfix import HotfixInputs, plan_hotfix, plan_revert_hotfix
from imaging.state.runs import new_run_id

ALREADY = "already-applied"


# --- packages ----------------------------------------------------------------------------------------


def load_package(ctx: Context, path: Path) -> Package:
    scratch = ctx.paths.hotfix_scratch / uuid.uuid4().hex[:12]
    return open_package(Path(path), releases=ctx.releases, scratch=scratch)


def store_package(ctx: Context, pkg: Package) -> tuple[str, str]:
    """Keep the package in the artifact store (kind ``hotfix``); one id, one content, forever."""
    name = f"hotfix-{pkg.hotfix.id}"
    data = package_tar(pkg)
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
    to_share(ctx, host_name, name)
    ctx.providers.run(Step("stage_artifact", host_name, {"name": name, "sha256": sha, "share_path": share,
                                                          "dest_path": dest},
                           f"stage {name} on {host_name} (pull from the share, verify sha256)"))
    return dest


# --- hotfix and revert on one instrument ---------------------------------------------------------------


def hotfix_inputs(ctx: Context, inst: Instrument, hotfix: Hotfix, package_path: str | None, op_id: str
                  ) -> HotfixInputs:
    """What the hotfix planner needs about one instrument (also for a rollback that reverts a hotfix)."""
    release = running_release(ctx, inst)
    state = carried(ctx, inst)
    health = health_now(ctx, inst)
    if release is None or state.generation is None or health is None:
        raise InputError(f"{inst.name} has no release recorded by this tool", field="instruments",
                         value=inst.name, fix=f"reimage it first (`invoke reimage --instrument={inst.name}`)")
    return HotfixInputs(inst=inst, host=ctx.inventory.host_of(inst), hotfix=hotfix, release=release,
                        apps_generation=state.generation, package_path=package_path, health=health,
                        op_id=op_id, owner=who(), stamp=stamp())


def check_applies(ctx: Context, insts: Iterable[Instrument], hotfix: Hotfix, source: str) -> None:
    """Refuse, before anything changes, when any instrument runs a release the hotfix does not apply to."""
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


def check_carries(ctx: Context, insts: Iterable[Instrument], hotfix_id: str) -> None:
    """Refuse a revert, before anything changes, when an instrument does not carry the hotfix."""
    missing = [i.name for i in insts if hotfix_id not in carried(ctx, i).hotfixes]
    if missing:
        raise InputError(f"{', '.join(missing)} do not carry hotfix {hotfix_id}", field="revert", value=hotfix_id,
                         fix="see `invoke hotfixes` for who carries what")


def plan_for_hotfix(ctx: Context, name: str, pkg_hotfix: Hotfix, package_path: str, op_id: str) -> Plan:
    inst = ctx.inventory.instrument(name)
    return plan_hotfix(hotfix_inputs(ctx, inst, pkg_hotfix, package_path, op_id))


def hotfix_one(ctx: Context, name: str, hotfix: Hotfix, artifact: tuple[str, str], *,
               listener: Listener | None = None, batch: str | None = None) -> Outcome:
    """Apply a stored hotfix to one instrument; a no-op when the instrument already carries it."""
    inst = ctx.inventory.instrument(name)
    if hotfix.id in carried(ctx, inst).hotfixes:
        return Outcome(op_id="", instrument=inst.name, ok=True, status=ALREADY)
    package_path = stage_package(ctx, *artifact, inst.host)
    op_id = new_op_id()
    plan = plan_hotfix(hotfix_inputs(ctx, inst, hotfix, package_path, op_id))
    return ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)


def revert_one(ctx: Context, name: str, hotfix_id: str, *, listener: Listener | None = None,
               batch: str | None = None) -> Outcome:
    inst = ctx.inventory.instrument(name)
    refuse_if_interrupted(ctx, inst)
    have = carried(ctx, inst).hotfixes
    if hotfix_id not in have:
        raise InputError(f"{inst.name} does not carry hotfix {hotfix_id}", field="revert", value=hotfix_id,
                         fix=f"see `invoke hotfixes`; it carries {', '.join(sorted(have)) or 'none'}")
    op_id = new_op_id()
    plan = plan_revert_hotfix(hotfix_inputs(ctx, inst, Hotfix.from_dict(have[hotfix_id]), None, op_id))
    return ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)


# --- many instruments --------------------------------------------------------------------------------


@dataclass
class HotfixRun:
    """A checked hotfix (or revert) over instruments, before anything changed: what the dry run prints and
    what ``run_hotfix`` carries out, with the same waves."""

    kind: str                    # "hotfix" or "revert"
    hotfix_id: str
    instruments: list[Instrument]
    waves: list[list[Job]]
    options: Options
    package: Package | None = None

    @property
    def what(self) -> str:
        return f"{self.kind} {self.hotfix_id}"


def prepare_hotfix(ctx: Context, insts: list[Instrument], *, patch: Path | None = None, revert: str | None = None,
                   options: Options | None = None) -> HotfixRun:
    """Check the package (or the revert) against every instrument and compute the waves; changes nothing."""
    if bool(patch) == bool(revert):
        raise ImagingError("give exactly one of --patch=PATH or --revert=ID")
    options = options or Options()
    waves = plan_waves([Job(i.name, i.host) for i in insts], canary=options.canary,
                       batches=parse_batches(options.batches))
    if revert:
        check_carries(ctx, insts, revert)
        return HotfixRun("revert", revert, insts, waves, options)
    pkg = load_package(ctx, Path(patch or ""))
    check_applies(ctx, insts, pkg.hotfix, pkg.source)
    return HotfixRun("hotfix", pkg.hotfix.id, insts, waves, options, package=pkg)


def run_hotfix(ctx: Context, run: HotfixRun, *, progress: ProgressFn | None = None) -> FleetResult:
    """Hotfix (or revert) the instruments in the planned waves with the fleet runner (canary, batches,
    limits, max-fail-percent, live progress, record and reports). A failure on one instrument restores that
    instrument's files; ``result.outcomes`` has each instrument's outcome."""
    if run.package is not None:
        pkg = run.package
        artifact = store_package(ctx, pkg)

        def one(name: str, listener: Listener, batch: str) -> Outcome:
            return hotfix_one(ctx, name, pkg.hotfix, artifact, listener=listener, batch=batch)
        restored = "its files were restored"
    else:
        def one(name: str, listener: Listener, batch: str) -> Outcome:
            return revert_one(ctx, name, run.hotfix_id, listener=listener, batch=batch)
        restored = "its hotfixed files were put back"
    return run_in_waves(ctx, run.kind, run.instruments, run.waves, run.options, one, restored=restored,
                        already=f"already carries {run.hotfix_id}", progress=progress,
                        state_of=lambda inst: sorted(carried(ctx, inst).hotfixes), hotfix=run.hotfix_id)


def run_in_waves(ctx: Context, kind: str, insts: list[Instrument], waves: list[list[Job]], options: Options,
                 one: Callable[[str, Listener, str], Outcome], *, restored: str, already: str,
                 progress: ProgressFn | None, state_of: Callable[[Instrument], Any], **extra: Any) -> FleetResult:
    """A change of running instruments in the planned waves with the fleet runner (canary, batches, limits,
    max-fail-percent, live progress, record and reports): hotfixes, reverts and settings changes. ``one``
    changes one instrument; an outcome with status ALREADY is skipped with ``already``."""
    emit = progress or (lambda kind, payload: None)
    record = new_record(kind, new_run_id(kind), [i.name for i in insts], waves, options,
                        {i.name: state_of(i) for i in insts}, **extra)
    outcomes: dict[str, Outcome | BaseException] = {}

    def listener(ev: StepEvent) -> None:
        emit("step", ev)

    def work(job: Job, notify: Callable[[Result], None]) -> Result:
        try:
            out = one(job.name, listener, record["id"])
        except Exception as exc:
            outcomes[job.name] = exc
            raise
        outcomes[job.name] = out
        if out.status == ALREADY:
            return Result(job.name, SKIPPED, already)
        return outcome_result(job.name, out, restored)

    result = run_fleet(ctx.fleet_folders, record, waves, limits_for(ctx.per_host_limits, options), work,
                       progress=progress, state_of=lambda name: state_of(ctx.inventory.instrument(name)))
    result.outcomes = outcomes
    return result


def hotfix(ctx: Context, names: list[str], patch: Path, options: Options | None = None, *,
           progress: ProgressFn | None = None) -> FleetResult:
    """Check the package and every instrument first; then hotfix them in waves like a deploy."""
    insts = [ctx.inventory.instrument(n) for n in names]
    return run_hotfix(ctx, prepare_hotfix(ctx, insts, patch=patch, options=options), progress=progress)


def revert(ctx: Context, names: list[str], hotfix_id: str, options: Options | None = None, *,
           progress: ProgressFn | None = None) -> FleetResult:
    """Revert a hotfix on instruments that carry it, in waves like a deploy (checked for all first)."""
    insts = [ctx.inventory.instrument(n) for n in names]
    return run_hotfix(ctx, prepare_hotfix(ctx, insts, revert=hotfix_id, options=options), progress=progress)


def list_hotfixes(ctx: Context) -> dict[str, dict[str, dict]]:
    """instrument -> hotfix id -> manifest, for every instrument that carries at least one."""
    out = {}
    for inst in ctx.inventory.instruments.values():
        have = carried(ctx, inst).hotfixes
        if have:
            out[inst.name] = have
    return out


# --- carry-over across releases ----------------------------------------------------------------------


def reapply_after_reimage(ctx: Context, inst: Instrument, ids: list[str], *, listener: Listener | None = None,
                          reimage_op: str = "") -> dict[str, Outcome]:
    """Put declared hotfixes back on the new Apps generation, from the packages kept in the store."""
    out = {}
    for hid in ids:
        try:
            manifest = known_hotfix(ctx, hid)
            if manifest is None:
                raise ImagingError(f"hotfix {hid} has no manifest in the journal; apply it with `invoke hotfix`")
            name = f"hotfix-{hid}"
            out[hid] = hotfix_one(ctx, inst.name, Hotfix.from_dict(manifest), (name, ctx.store.get(name).sha256),
                                  listener=listener, batch=CARRY + reimage_op)
        except ImagingError as exc:  # the reimage stands; the caller reports which hotfix is missing
            out[hid] = Outcome(op_id="", instrument=inst.name, ok=False, status="failed", error=str(exc))
    return out
