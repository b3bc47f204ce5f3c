"""What every task body shares: the consoles, errors printed without a traceback, the context, and the
displays of plans, steps, fleet runs and predictions. Printing only; every decision is in ``imaging.ops``."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from invoke import Exit
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.prompt import Confirm
from rich.table import Table

from imaging.core.errors import ImagingError, os_error
from imaging.ops.context import Context
from imaging.ops.deploy import abort_rule_of

# Piped output (logs, CI) is not squeezed to 80 columns: tables stay readable; COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Tasks print ImagingError as one clear message and exit non-zero, never with a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImagingError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise Exit(code=1) from None
        except OSError as exc:  # disk full, read-only, permissions: the path and the fix, never a traceback
            err_console.print(f"[bold red]error:[/] {os_error(exc)}", soft_wrap=True)
            raise Exit(code=1) from None

    return wrapper


@contextmanager
def context() -> Iterator[Context]:
    ctx = Context.load()
    try:
        yield ctx
    finally:
        ctx.close()


def names(csv: str) -> list[str]:
    """``A,B,,C`` -> ``["A", "B", "C"]``."""
    return [n.strip() for n in csv.split(",") if n.strip()]


def confirm(question: str, yes: bool) -> None:
    """Ask before a fleet run changes anything; unattended runs must say --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ImagingError("not confirmed: pass --yes to run without a question (unattended runs)")
    if not Confirm.ask(question, console=console):
        raise ImagingError("not confirmed; nothing was changed")


def fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --- one operation ------------------------------------------------------------------------------------


class StepPrinter:
    """Prints each step as it starts and ends, with its time: the progress display of one operation."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, ev: Any) -> None:
        label = {"undo": "undo", "stage": "stage"}.get(ev.phase, f"{ev.index + 1:2d}/{ev.total}")
        if ev.ok is None:
            if sys.stdout.isatty():
                console.print(f"[dim]{ev.instrument} {label} … {ev.step.summary}[/]", end="\r")
            return
        mark = "[green]ok[/]" if ev.ok else "[bold red]FAILED[/]"
        extra = " [dim](already done)[/]" if ev.already_done else ""
        if ev.result and ev.step.action == "rescue_user_files" and ev.result.get("files"):
            extra += "\n      rescued: " + ", ".join(ev.result["files"])
        if ev.error:
            extra += f"\n      {ev.error}"
        console.print(f"{ev.instrument} {label} {mark} {ev.seconds:6.2f}s  {ev.step.summary}{extra}",
                      soft_wrap=True)


def print_plan(plan: Any, *, dry_run: bool = True) -> None:
    """The plan in plain words and its notes; for a dry run, the promise that nothing changed."""
    if plan.kind == "side":
        head = f"switch {plan.instrument} to its {plan.rollback_point['to']} side"
    elif plan.kind == "retire-legacy":
        head = f"retire the legacy side of {plan.instrument}"
    elif plan.kind == "unadopt":
        head = f"give {plan.instrument} back to its hand-made VM {plan.rollback_point['unadopted']}"
    else:
        head = f"{plan.kind} of {plan.instrument}"
    console.print(f"[bold]Plan: {head} ({plan.vm} on {plan.host})"
                  + ("" if plan.kind in ("side", "retire-legacy", "unadopt") else
                     f" from {plan.from_release or 'nothing recorded'} to {plan.to_release}") + "[/]")
    for line in plan.describe():
        console.print(line, soft_wrap=True)
    for note in plan.notes:
        console.print(f"  note: {note}", soft_wrap=True)
    if dry_run:
        console.print("[dim]dry run: nothing was changed[/]")


def print_outcome(outcome: Any, instrument: str, journal: Any = None) -> None:
    if outcome.ok:
        console.print(f"[bold green]{instrument}: done[/] in {outcome.seconds:.2f}s (operation {outcome.op_id})")
        if journal is not None:
            op = journal.operation(outcome.op_id)
            changed = sum(1 for r in journal.steps(op.id) if r.phase == "do" and r.changed)
            rescued = [f for r in journal.steps(op.id) if r.action == "rescue_user_files" and r.result
                       for f in r.result.get("files", [])]
            if op.kind == "retire-legacy":
                console.print(f"  {instrument}: {(op.rollback_point or {}).get('retired')} and its disks are deleted;"
                              " the instrument has no legacy side any more")
                return
            if op.kind == "unadopt":
                rp = op.rollback_point or {}
                copied = [r.result for r in journal.steps(op.id) if r.action == "copy_from_disk" and r.result]
                console.print(f"  {instrument}: {rp.get('unadopted')} runs again as {op.vm}; "
                              f"{sum(c.get('files', 0) for c in copied)} file(s) copied back into its own folders, "
                              f"verified ({sum(c.get('replaced', 0) for c in copied)} it replaced kept aside); kept "
                              f"on the host, detached: {', '.join(rp.get('kept_disks', []))}", soft_wrap=True)
                return
            if op.kind == "side":
                rp = op.rollback_point or {}
                vm = rp.get("legacy_vm") if rp.get("to") == "legacy" else op.vm
                console.print(f"  {instrument} now runs its {rp.get('to')} side ({vm}); the other side is off")
                return
            adopted = (op.rollback_point or {}).get("adopted")
            console.print(f"  {op.kind}: {op.from_release or 'nothing recorded'} -> {op.to_release}; "
                          f"{changed} steps changed something"
                          + (f"; {len(rescued)} user file(s) rescued to Var" if rescued else
                             "" if adopted else "; no user files to rescue"))
            if adopted:
                copied = [r.result for r in journal.steps(op.id) if r.action == "copy_from_disk" and r.result]
                console.print(f"  adopted: the old VM is kept whole as {adopted['legacy_vm']} (off); "
                              f"{sum(c.get('files', 0) for c in copied)} file(s) copied off its disk, verified; "
                              f"survey: {adopted.get('survey')}", soft_wrap=True)
        return
    err_console.print(f"[bold red]{instrument}: failed at {outcome.failed_step}[/]: {outcome.error}",
                      soft_wrap=True)
    if outcome.restored:
        err_console.print(f"{instrument} was restored to its state before the operation ({outcome.status}).")
    else:
        err_console.print(f"{instrument} could not be fully restored; after fixing the cause run "
                          f"`invoke rollback --instrument={instrument}`.")
    raise Exit(code=1)


# --- fleet runs ---------------------------------------------------------------------------------------


class FleetDisplay:
    """Live view of a fleet run: one line per running instrument (step, elapsed) and a total bar."""

    def __init__(self, total: int, what: str = "") -> None:
        self.lock = threading.Lock()
        self.running: dict[str, tuple[str, float]] = {}
        self.bar = Progress(TextColumn("total"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)
        self.task = self.bar.add_task("deploy", total=total)
        self.what = what  # "hotfix"/"revert": end lines read "ZOOM: hotfix done"; deploys: "ZOOM ok"

    def __rich__(self) -> Any:
        now = time.monotonic()
        with self.lock:
            rows = [f"  {name:<10} {now - t0:6.1f}s  {step}" for name, (step, t0) in sorted(self.running.items())]
        return Group(*rows, self.bar)

    def __call__(self, kind: str, payload: Any) -> None:
        with self.lock:
            if kind == "step":
                ev = payload
                _, t0 = self.running.get(ev.instrument, ("", time.monotonic()))
                label = "undo " if ev.phase == "undo" else f"{ev.index + 1}/{ev.total} "
                self.running[ev.instrument] = (label + ev.step.action, t0)
                return
            ev = payload
            if ev.kind == "job_start" and ev.job:
                self.running[ev.job.name] = ("starting", time.monotonic())
            elif ev.kind == "job_end" and ev.job and ev.result:
                self.running.pop(ev.job.name, None)
                self.bar.advance(self.task)
                r = ev.result
                color = {"ok": "green", "failed": "bold red", "skipped": "yellow"}.get(r.status, "")
                extra = f" at {r.step}: {r.detail}" if r.status == "failed" else (f": {r.detail}" if r.detail else "")
                word = {"ok": "done"}.get(r.status, r.status)
                head = f"{ev.job.name}: {self.what} {word}" if self.what else f"{ev.job.name} {r.status}"
                console.print(f"[{color}]{head}[/]{extra}", soft_wrap=True)
            elif ev.kind == "wave_start":
                console.print(f"[bold]wave {ev.wave + 1}[/] ({ev.message})")
            elif ev.kind == "stop":
                console.print(f"[bold red]stopping:[/] {ev.message}", soft_wrap=True)


def run_live(display: FleetDisplay, fn: Callable[[], Any]) -> Any:
    if not console.is_terminal:
        return fn()
    with Live(display, console=console, refresh_per_second=4, transient=True):
        return fn()


def _state_cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return value or "-"


def print_recap(result: Any) -> None:
    """The end-of-run table of any fleet run (deploy, hotfix, revert); before/after are the release, or the
    hotfixes carried. Exits non-zero when the run stopped or an instrument failed."""
    rec = result.record
    kind = rec.get("kind", "deploy")
    table = Table(title=f"{kind.capitalize()} {rec['id']}: {result.subject}")
    for col in ("instrument", "before", "after", "result", "time", "step", "detail"):
        table.add_column(col)
    counts: dict[str, int] = {}
    for name in rec["selection"]:
        r = rec["results"].get(name, {"status": "not_started"})
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        secs = r.get("seconds")
        table.add_row(name, _state_cell(rec["before"].get(name)), _state_cell(rec.get("after", {}).get(name)),
                      r["status"],
                      fmt_s(secs) if secs is not None else "", r.get("step") or "", r.get("detail") or "")
    console.print(table)
    console.print(" ".join(f"{k}: {counts.get(k, 0)}" for k in ("ok", "failed", "skipped", "not_started")))
    if rec.get("stopped"):
        err_console.print(f"[bold red]{kind} stopped:[/] {rec['stopped']}", soft_wrap=True)
    console.print(f"report: {result.report_md} and {result.report_json}")
    if result.failed:
        raise Exit(code=1)


def print_fleet_plan(rows: Any, prediction: Any) -> None:
    table = Table(title="Fleet plan")
    for col in ("instrument", "host", "now", "after", "migrations", "hotfixes dropped", "not staged", "estimate",
                "note"):
        table.add_column(col)
    for r in rows:
        staged = "?" if r.not_staged is None else (", ".join(r.not_staged) or "-")
        table.add_row(r.instrument, r.host, r.now or "-", r.after, ", ".join(r.migrations) or "-",
                      ", ".join(r.hotfixes_dropped) or "-", staged, fmt_s(r.estimate_s), r.note)
    console.print(table)
    console.print(f"waves: {' | '.join(', '.join(w) for w in prediction.summary.waves)}", soft_wrap=True)
    console.print(f"estimated duration (time model): {fmt_s(prediction.makespan)}")


def print_abort_rule(names: list[str], options: Any) -> None:
    """The rule the run stops by, printed with its plan so the operator sees it before confirming."""
    console.print(abort_rule_of(names, options), soft_wrap=True)


def print_prediction(p: Any) -> None:
    what = {"prepare": "preparation (no instrument is down)", "switch": "switch window"}.get(p.phase, "total duration")
    console.print(f"[bold]predicted {what}: {fmt_s(p.makespan)}[/] "
                  f"(lower bound {fmt_s(p.lower_bound)}, set by {p.bound_resource}; "
                  f"ratio {p.makespan / p.lower_bound:.2f})")
    if p.phase != "prepare":
        console.print(f"each instrument is down {fmt_s(p.downtime_mean)} on average, {fmt_s(p.downtime_max)} at most")
    table = Table(title="Per-host utilisation")
    for col in ("host", "slots busy", "disk busy"):
        table.add_column(col)
    for host, slots in p.slot_use.items():
        table.add_row(host, f"{slots:.0%}", f"{p.utilisation.get('disk:' + host, 0.0):.0%}")
    console.print(table)
    if "share" in p.utilisation:
        console.print(f"image share busy {p.utilisation['share']:.0%} of the time")
    name, share = p.critical()
    console.print(f"critical resource: {name} ({share:.0%} busy)")
