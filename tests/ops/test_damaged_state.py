"""A damaged state file affects only what it describes, and is named (issue 13, item 7 in part)."""

from __future__ import annotations

from pathlib import Path

from imaging.engine import runner
from imaging.model import layout
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from tests.ops.test_failed_undo import _ctx


def test_a_damaged_var_record_does_not_stop_the_fleet_plan_or_the_reimage(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    zoom = ctx.inventory.instrument("ZOOM")
    var = ctx.providers.lab.path(zoom.host, layout.disk_path(ctx.inventory.host_of(zoom), zoom, "var"))
    record = var / "content" / "imaging" / "record.json"
    record.write_bytes(b'{"release": "2026C3.0", "hotf')  # cut short, like a disk that filled up
    plan = deploys.plan_deploy(ctx, facts.select(ctx, group="B"), "2026C3.1", runner.Options())
    assert len(plan.rows) == 17
    [row] = [r for r in plan.rows if r.instrument == "ZOOM"]
    assert "Var record is damaged" in row.note
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    assert facts.instrument_record(ctx, zoom)["release"] == "2026C3.1"
    assert (var / "content" / "imaging" / "record.damaged.json").read_bytes().startswith(b'{"release"')
    ctx.close()


def test_a_damaged_run_record_does_not_block_resume_or_failed(project: Path) -> None:
    ctx = _ctx(project)
    first = deploys.deploy(ctx, facts.select(ctx, instruments="ALF"), "2026C3.0", runner.Options(canary=""))
    broken = _ctx(project, "NDXGEM:health_check")
    failed = deploys.deploy(broken, facts.select(broken, instruments="GEM"), "2026C3.0", runner.Options(canary=""))
    assert failed.summary.names("failed") == ["GEM"]
    (ctx.paths.runs / f"{first.id}.json").write_text("{ not json")
    assert [i.name for i in facts.select(ctx, instruments="@failed")] == ["GEM"]
    assert deploys.resumable(ctx) is None
    records = ctx.runs
    records.all()
    assert records.damaged == [ctx.paths.runs / f"{first.id}.json"]  # named, for status and the operator
    ctx.close()
    broken.close()
