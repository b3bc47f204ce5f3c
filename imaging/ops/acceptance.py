"""`invoke acceptance`: the first contact with a real host as one command. On a spare host and a throwaway
instrument (``scratch: true``), it runs doctor, then every action once: stage the release's images, create
and reimage the VM, read its settings for drift, prepare and switch to a second release, apply and revert a
probe hotfix, roll back, and clean up (the VM and its generations; its Var and Data disks are never
deleted). Each phase and each script is timed, and a Markdown report is written: what the facility sends
back when something fails."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, InputError
from imaging.core.files import atomic_write
from imaging.core.stamps import new_op_id, stamp, who
from imaging.model import layout
from imaging.model.hotfixes import build_manifest, write_package
from imaging.model.inventory import SLOTS, Instrument
from imaging.model.plan import STOP_TIMEOUT_S, Plan
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.doctor import doctor
from imaging.ops.facts import desired_release, observe
from imaging.ops.hotfix import hotfix, revert
from imaging.ops.prepare import prepare
from imaging.ops.reimage import plan_for_reimage, reimage_to
from imaging.ops.rollback import rollback_last
from imaging.ops.switch import switch


@dataclass
class Phase:
    name: str
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    operations: list[str] = field(default_factory=list)  # journal operations it ran (their scripts are listed)


@dataclass
class Acceptance:
    host: str
    instrument: str
    release: str
    next_release: str | None
    phases: list[Phase] = field(default_factory=list)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(p.ok for p in self.phases)


def check_scratch(ctx: Context, host: str, name: str) -> Instrument:
    """Refused unless the instrument is marked ``scratch: true`` and lives on that host."""
    inst = ctx.inventory.instrument(name)
    if not inst.scratch:
        raise InputError(f"{inst.name} is not a scratch instrument: acceptance creates its VM, replaces its disks and "
                         "removes them again; nothing was changed", file=inst.source, field="scratch",
                         value=inst.scratch, fix="give acceptance a throwaway instrument marked `scratch: true` in its "
                                                "file (docs/hyperv.md, \"Your first real host\")")
    if inst.host != host:
        raise InputError(f"{inst.name} lives on {inst.host}, not {host}", field="--host", value=host,
                         fix=f"use --host={inst.host}, or a scratch instrument of {host}")
    return inst


def _discard_plan(ctx: Context, inst: Instrument, op_id: str) -> Plan:
    """Remove the scratch VM and its OS/Apps/Settings generations; Var and Data stay (never deleted)."""
    host = ctx.inventory.host_of(inst)
    obs = observe(ctx, inst)
    h, vm = host.name, inst.vm
    steps: list[Step] = []
    if obs.power == "Running":
        steps.append(Step("stop_vm", h, {"vm": vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {vm}"))
    for slot, path in sorted(obs.disks.items()):
        steps.append(Step("detach_disk", h, {"vm": vm, "slot": slot, "path": path}, f"detach {path}"))
    if obs.exists:
        steps.append(Step("remove_vm", h, {"vm": vm}, f"remove the scratch VM {vm}"))
    keep = {layout.disk_path(host, inst, r) for r in inst.disks.persistent()}
    made: dict[str, str] = {path: role for slot, path in obs.disks.items() for role, s in SLOTS.items() if s == slot}
    for op in ctx.journal.operations(instrument=inst.name):  # every generation acceptance made, attached or not
        rp = op.rollback_point or {}
        made |= {path: role for role, path in (rp.get("new") or {}).items()}
    for path, role in sorted(made.items()):
        if path not in keep and role in ("os", "apps", "settings"):
            steps.append(Step("delete_disk", h, {"path": path, "role": role}, f"delete {path}"))
    return Plan(kind="acceptance-cleanup", instrument=inst.name, vm=vm, host=h, from_release=None,
                to_release=None, steps=steps, notes=["the scratch instrument's Var and Data disks are kept"])


def run_acceptance(ctx: Context, host: str, name: str, *, release: str | None = None,
                   next_release: str | None = None, say: Callable[[str], None] | None = None) -> Acceptance:
    inst = check_scratch(ctx, host, name)
    target = desired_release(ctx, inst, release)
    out = Acceptance(host=host, instrument=inst.name, release=target, next_release=next_release)
    tell = say or (lambda _m: None)

    def phase(title: str, work: Callable[[Phase], str]) -> bool:
        p = Phase(title)
        since = {o.id for o in ctx.journal.operations(instrument=inst.name)}
        t0 = time.monotonic()
        tell(f"{title} ...")
        try:
            p.detail = work(p)
            p.ok = True
        except ImagingError as exc:
            p.detail = str(exc)
        p.seconds = time.monotonic() - t0
        p.operations += [o.id for o in ctx.journal.operations(instrument=inst.name) if o.id not in since]
        out.phases.append(p)
        tell(f"{title}: {'ok' if p.ok else 'FAILED'} ({p.seconds:.1f} s) {p.detail}")
        return p.ok

    def checked(outcome: Any, what: str) -> str:
        if not outcome.ok:
            raise ImagingError(f"{what} failed at {outcome.failed_step}: {outcome.error}")
        return f"{what}: operation {outcome.op_id}"

    def do_doctor(_p: Phase) -> str:
        failed = [c for c in doctor(ctx, [host]) if not c.ok]
        if failed:
            raise ImagingError("; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed))
        return "every check passed"

    def do_hotfix(_p: Phase) -> str:
        probe = {"acceptance/probe.txt": f"imaging acceptance {stamp()}\n".encode()}
        with tempfile.TemporaryDirectory(prefix="imaging-acceptance-") as tmp:
            hid = f"ACCEPT-{new_op_id()[:8]}"
            folder = write_package(Path(tmp) / hid, build_manifest(hid, "acceptance probe file", [target], probe),
                                   probe)
            applied = hotfix(ctx, [inst.name], folder).outcomes[inst.name]
            checked(applied, f"hotfix {hid}")
        reverted = revert(ctx, [inst.name], hid).outcomes[inst.name]
        return checked(reverted, f"hotfix {hid} applied and reverted")

    def do_cleanup(_p: Phase) -> str:
        op_id = new_op_id()
        plan = _discard_plan(ctx, inst, op_id)
        checked(ctx.executor().execute(plan, op_id=op_id), "cleanup")
        kept = sorted(layout.disk_path(ctx.inventory.host_of(inst), inst, r) for r in inst.disks.persistent())
        return f"{len(plan.steps)} steps; kept (never deleted): {', '.join(kept)}"

    steps: list[tuple[str, Callable[[Phase], str]]] = [
        ("doctor", do_doctor),
        ("reimage (creates the VM; stages the images)",
         lambda p: checked(reimage_to(ctx, inst, target, force=True), f"reimage to {target}")),
        ("drift read (settings read in the running guest)",
         lambda p: f"{len(plan_for_reimage(ctx, inst.name, target).steps)} steps planned, no drift"),
        ("hotfix and revert", do_hotfix),
    ]
    if next_release:
        steps += [
            ("prepare", lambda p: checked(prepare(ctx, inst, next_release).outcome, f"prepare {next_release}")),
            ("switch", lambda p: checked(switch(ctx, inst), f"switch to {next_release}")),
            ("rollback", lambda p: checked(rollback_last(ctx, inst.name), "rollback to the generation before")),
        ]
    else:
        steps += [("reimage again (rescue of the old OS disk)",
                   lambda p: checked(reimage_to(ctx, inst, target, force=True), f"reimage to {target} again")),
                  ("rollback", lambda p: checked(rollback_last(ctx, inst.name), "rollback to the generation before"))]
    for title, work in steps:
        if not phase(title, work):
            break
    phase("cleanup", do_cleanup)  # always: the host is left as it was found, but for the kept disks
    out.report = write_report(ctx, out)
    return out


def write_report(ctx: Context, acc: Acceptance) -> Path:
    """The Markdown report: each phase, then each script it ran with its duration and result."""
    lines = [f"# Acceptance of {acc.host}", "", f"- instrument: {acc.instrument} (scratch)", f"- release: {acc.release}"
             + (f", then {acc.next_release}" if acc.next_release else ""), f"- by {who()} at {stamp()}",
             f"- result: **{'passed' if acc.ok else 'FAILED'}**", "", "| phase | result | seconds | detail |",
             "|---|---|---|---|"]
    lines += [f"| {p.name} | {'ok' if p.ok else 'FAILED'} | {p.seconds:.1f} | {p.detail.replace('|', '/')} |"
              for p in acc.phases]
    lines += ["", "## Scripts", "", "| phase | operation | step | action | result | seconds |",
              "|---|---|---|---|---|---|"]
    for p in acc.phases:
        for op_id in p.operations:
            for s in ctx.journal.steps(op_id):
                secs = _seconds(s.started, s.ended)
                lines.append(f"| {p.name} | {op_id} | {s.idx + 1}{' (undo)' if s.phase == 'undo' else ''} | "
                             f"{s.action} | {s.status} | {secs} |")
    path = ctx.paths.reports / f"acceptance-{acc.host}-{stamp()}.md"
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _seconds(started: str, ended: str | None) -> str:
    from datetime import datetime

    if not ended:
        return "-"
    return f"{(datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds():.2f}"
