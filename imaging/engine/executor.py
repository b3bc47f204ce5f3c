"""Carries out a plan on a provider: step by step, journaled, undone in reverse on failure, resumable.

The journal row of each step is written before the step starts and after it ends, so a killed process
leaves an exact trail: `resume` continues from the first step not finished, `rollback` undoes in reverse
every step that changed something. A process-level lock (released by the kernel when a process dies) tells a
live operation from an interrupted one, on one machine; the host-side lock step keeps operators on
different machines apart.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, LockHeld
from imaging.model.plan import Plan
from imaging.model.steps import CHECK_ACTIONS, Step
from imaging.providers.base import Provider
from imaging.state.journal import FAILED, OK, ROLLBACK_FAILED, ROLLED_BACK, RUNNING, Journal


@dataclass
class StepEvent:
    """What progress displays are told: a step started (ok is None) or ended."""

    instrument: str
    phase: str  # "do" | "undo"
    index: int
    total: int
    step: Step
    ok: bool | None = None
    seconds: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def already_done(self) -> bool:
        """The step ended having changed nothing (and is not a mere check): it had been done before."""
        return bool(self.result) and not self.result.get("changed", True) and self.step.action not in CHECK_ACTIONS


Listener = Callable[[StepEvent], None]


@dataclass
class Outcome:
    op_id: str
    instrument: str
    ok: bool
    status: str
    failed_step: str | None = None
    error: str | None = None
    restored: bool = False
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


class Busy(LockHeld):
    """Another live process on this machine is operating on the instrument."""


@contextmanager
def instrument_guard(locks: Path, instrument: str) -> Iterator[None]:
    """Hold an exclusive, crash-safe lock on one instrument for the life of this process's operation."""
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{instrument}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{instrument} is being operated on by another process right now; wait for it to "
                       "finish (see `invoke status`)") from None
        yield
    finally:
        os.close(fd)


def is_live(locks: Path, instrument: str) -> bool:
    """True when some process holds the instrument's guard (its operation is running, not interrupted)."""
    try:
        with instrument_guard(locks, instrument):
            return False
    except Busy:
        return True


class Executor:
    def __init__(self, provider: Provider, journal: Journal, locks: Path,
                 listener: Listener | None = None) -> None:
        self.provider, self.journal, self.locks = provider, journal, locks
        self.listener = listener or (lambda event: None)

    # --- public entry points ---------------------------------------------------------------------
    def execute(self, plan: Plan, *, op_id: str, batch: str | None = None) -> Outcome:
        with instrument_guard(self.locks, plan.instrument):
            self.journal.begin(kind=plan.kind, instrument=plan.instrument, vm=plan.vm, host=plan.host,
                               plan=plan.to_dicts(), from_release=plan.from_release, to_release=plan.to_release,
                               batch=batch, op_id=op_id)
            self.journal.set_rollback_point(op_id, plan.rollback_point)
            return self._run(plan.instrument, op_id, plan.steps, start=0, changed=set())

    def resume(self, op_id: str) -> Outcome:
        op = self.journal.operation(op_id)
        with instrument_guard(self.locks, op.instrument):
            self._check_resumable(op_id)
            steps = [Step.from_dict(d) for d in op.plan]
            done, changed = self._progress(op_id)
            start = max(done) + 1 if done else 0
            self.journal.claim(op_id)
            return self._run(op.instrument, op_id, steps, start=start, changed=changed)

    def rollback_interrupted(self, op_id: str) -> Outcome:
        """Undo, in reverse, every step of an interrupted or failed operation that changed something."""
        op = self.journal.operation(op_id)
        with instrument_guard(self.locks, op.instrument):
            steps = [Step.from_dict(d) for d in op.plan]
            started = [r.idx for r in self.journal.steps(op_id) if r.phase == "do"]
            _, changed = self._progress(op_id)
            undone = {r.idx for r in self.journal.steps(op_id) if r.phase == "undo" and r.status == OK}
            last = max(started) if started else -1
            self.journal.claim(op_id)
            t0 = time.monotonic()
            failed = last if last not in undone else None  # an undo that already succeeded is not run again
            ok = self._undo(op.instrument, op_id, steps, last, changed - undone, failed_idx=failed)
            status = ROLLED_BACK if ok else ROLLBACK_FAILED
            self.journal.finish(op_id, status, op.error or "interrupted; rolled back")
            return Outcome(op_id=op_id, instrument=op.instrument, ok=False, status=status, restored=ok,
                           error=op.error, seconds=time.monotonic() - t0)

    # --- internals -------------------------------------------------------------------------------
    def _check_resumable(self, op_id: str) -> None:
        op = self.journal.operation(op_id)
        if op.status != RUNNING:
            raise ImagingError(f"operation {op_id} on {op.instrument} is {op.status}, not interrupted; "
                               "nothing to resume")
        if any(r.phase == "undo" for r in self.journal.steps(op_id)):
            raise ImagingError(f"operation {op_id} was being undone when it stopped; finish that with "
                               f"`invoke rollback --instrument={op.instrument}`")

    def _progress(self, op_id: str) -> tuple[set[int], set[int]]:
        done, changed = set(), set()
        for r in self.journal.steps(op_id):
            if r.phase == "do" and r.status == OK:
                done.add(r.idx)
                if r.changed:
                    changed.add(r.idx)
        return done, changed

    def _run(self, instrument: str, op_id: str, steps: list[Step], *, start: int, changed: set[int]) -> Outcome:
        t0 = time.monotonic()
        results: dict[int, dict[str, Any]] = {}
        total = len(steps)
        for i in range(start, total):
            step = steps[i]
            self.journal.step_start(op_id, i, "do", step.action, step.summary)
            self.listener(StepEvent(instrument, "do", i, total, step))
            s0 = time.monotonic()
            try:
                result = self.provider.run(step)
            except Exception as exc:  # a failed step: record it, then put the instrument back
                msg = str(exc) or type(exc).__name__
                self.journal.step_end(op_id, i, "do", ok=False, error=msg)
                self.listener(StepEvent(instrument, "do", i, total, step, ok=False,
                                        seconds=time.monotonic() - s0, error=msg))
                if isinstance(exc, LockHeld) and step.action == "acquire_lock":
                    self.journal.finish(op_id, FAILED, msg)
                    return Outcome(op_id, instrument, False, FAILED, step.action, msg, restored=True,
                                   seconds=time.monotonic() - t0)
                restored = self._undo(instrument, op_id, steps, i - 1, changed, failed_idx=i)
                status = ROLLED_BACK if restored else ROLLBACK_FAILED
                self.journal.finish(op_id, status, f"{step.action}: {msg}")
                return Outcome(op_id, instrument, False, status, step.action, msg, restored=restored,
                               results=results, seconds=time.monotonic() - t0)
            results[i] = result
            if result.get("changed"):
                changed.add(i)
            self.journal.step_end(op_id, i, "do", ok=True, changed=bool(result.get("changed")), result=result)
            self.listener(StepEvent(instrument, "do", i, total, step, ok=True, seconds=time.monotonic() - s0,
                                    result=result))
        self.journal.finish(op_id, OK)
        return Outcome(op_id, instrument, True, OK, results=results, seconds=time.monotonic() - t0)

    def _undo(self, instrument: str, op_id: str, steps: list[Step], last: int, changed: set[int],
              *, failed_idx: int | None) -> bool:
        """Undo steps ``last``..0 that changed something (and the failed step itself), strictly in reverse;
        True when all undid. The first undo that fails stops the rest (starting the VM again after its old
        disks failed to come back would run it on the wrong disks): `invoke rollback` later carries on from
        that step, in the same order."""
        order = list(range(last, -1, -1))
        if failed_idx is not None and failed_idx > last and steps[failed_idx].action != "acquire_lock":
            order.insert(0, failed_idx)
        all_ok = True
        total = len(steps)
        for j in order:
            step = steps[j]
            if step.undo is None or (j not in changed and j != failed_idx):
                continue
            if step.action == "acquire_lock" and not all_ok:
                break  # keep the instrument locked: it is not back in a known state
            undo = step.undo
            self.journal.step_start(op_id, j, "undo", undo.action, undo.summary)
            self.listener(StepEvent(instrument, "undo", j, total, undo))
            s0 = time.monotonic()
            try:
                result = self.provider.run(undo)
            except Exception as exc:  # stop here: the undo steps before it assume it was done
                all_ok = False
                self.journal.step_end(op_id, j, "undo", ok=False, error=str(exc))
                self.listener(StepEvent(instrument, "undo", j, total, undo, ok=False,
                                        seconds=time.monotonic() - s0, error=str(exc)))
                break
            self.journal.step_end(op_id, j, "undo", ok=True, changed=bool(result.get("changed")), result=result)
            self.listener(StepEvent(instrument, "undo", j, total, undo, ok=True, seconds=time.monotonic() - s0))
        return all_ok
