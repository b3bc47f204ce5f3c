"""A failed undo is not a dead end: `invoke rollback` finishes it (issue 13, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

from imaging.core.config import Paths
from imaging.model.steps import Step
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from imaging.ops import rollback as rollbacks
from imaging.ops import status as statuses
from imaging.ops.context import Context
from imaging.providers.base import StepHook
from imaging.providers.lab.faults import InjectedFault, faults_from_env
from tests.cli.test_cli import inv
from tests.ops.test_reimage import user_data


def _ctx(project: Path, faults: str | None = None, *, fault: StepHook | None = None) -> Context:
    """A lab context with small sample images; ``faults`` as IMAGING_LAB_FAULTS spells them, or a hook."""
    ctx = Context.load(Paths.from_env(project), fault=fault or (faults_from_env(faults) if faults else None))
    ctx.sample_sizes = (60, 40)
    return ctx


def test_rollback_finishes_an_undo_that_failed_and_releases_the_lock(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    before = user_data(ctx)
    ctx.close()
    broken = _ctx(project, "NDXZOOM:backup_volume,NDXZOOM:start_vm")  # the undo's start fails too
    out = reimaging.reimage(broken, "ZOOM", "2026C3.1")
    assert not out.ok and not out.restored and out.status == "rollback_failed"
    broken.close()

    ctx = _ctx(project)  # the operator fixed the cause
    zoom = ctx.inventory.instrument("ZOOM")
    stuck = facts.unfinished(ctx, zoom)
    assert stuck is not None and stuck.id == out.op_id
    [row] = statuses.fleet_status(ctx, ["ZOOM"])
    assert "invoke rollback --instrument=ZOOM" in row.hint and "locked" in row.pending
    for refused in (lambda: reimaging.reimage(ctx, "ZOOM", "2026C3.1"), lambda: reimaging.resume(ctx, "ZOOM")):
        try:
            refused()
        except Exception as exc:  # noqa: BLE001 - each must name the one way out
            assert "invoke rollback --instrument=ZOOM" in str(exc)
        else:
            raise AssertionError("a stuck instrument was operated on")
    choice = rollbacks.choose_rollback(ctx, "ZOOM")
    assert choice.interrupted is not None and choice.interrupted.id == out.op_id
    done = rollbacks.rollback(ctx, choice)
    assert done.restored
    assert facts.observe(ctx, zoom).power == "Running"
    assert facts.unfinished(ctx, zoom) is None and user_data(ctx) == before
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok  # and it can be reimaged again: the lock is free
    ctx.close()
    [row] = json.loads(inv(project, "status", "--json", "--instruments=ZOOM").stdout)
    assert row["last_result"] == "ok" and not row["hint"] and "locked" not in row["pending"]


def test_the_faults_used_above_are_real_failures() -> None:
    hook = faults_from_env("NDXZOOM:start_vm")
    try:
        hook(Step("start_vm", "H", {"vm": "NDXZOOM"}, "s"))
    except InjectedFault:
        return
    raise AssertionError("the fault hook did not fail the step")


def test_a_failed_reimage_puts_the_var_record_back_too(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    zoom = ctx.inventory.instrument("ZOOM")

    def record() -> dict:
        return facts.instrument_record(ctx, zoom)

    assert record()["release"] == "2026C3.0"
    ctx.close()
    broken = _ctx(project, "NDXZOOM:release_lock")  # fails after write_record, and so does the unlock
    out = reimaging.reimage(broken, "ZOOM", "2026C3.1")
    assert not out.ok and out.failed_step == "release_lock"
    assert record()["release"] == "2026C3.0"  # the record was undone with the rest
    broken.close()
    ctx = _ctx(project)
    try:
        assert rollbacks.rollback(ctx, rollbacks.choose_rollback(ctx, "ZOOM")).restored  # the unlock, finished
        assert record()["release"] == "2026C3.0"  # one release everywhere: disks, journal, guest and Var record
        assert facts.running_release(ctx, zoom) == "2026C3.0" and facts.unfinished(ctx, zoom) is None
    finally:
        ctx.close()


def test_after_a_resume_no_journal_step_stays_running(project: Path) -> None:
    import pytest

    from tests.ops.test_reimage import Crash

    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    ctx.close()

    def crash(step: Step) -> None:
        if step.action == "attach_disk":
            raise Crash("killed")

    killed = Context.load(Paths.from_env(project), fault=crash)
    killed.sample_sizes = (60, 40)
    with pytest.raises(Crash):
        reimaging.reimage(killed, "ZOOM", "2026C3.1")
    ctx = _ctx(project)
    op = facts.interrupted(ctx, ctx.inventory.instrument("ZOOM"))
    assert [s.status for s in ctx.journal.steps(op.id)].count("running") == 1  # the step it died in
    assert reimaging.resume(ctx, "ZOOM").ok
    statuses = [s.status for s in ctx.journal.steps(op.id)]
    assert "running" not in statuses and statuses.count("interrupted") == 1
    ctx.close()
