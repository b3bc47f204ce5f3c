"""Issue 18: `invoke calibrate` turns a real run's measured phases into a time model, refuses a report
without real measurements, and a report over a damaged or partial record says what is missing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from imaging.core.errors import InputError
from imaging.engine import runner
from imaging.engine.html_report import render_run
from imaging.engine.simulate import TimeModel
from imaging.engine.timeline import measured
from imaging.model.steps import Step
from imaging.ops import calibrate as calibrating
from imaging.ops import deploy as deploys
from tests.ops.test_reimage import ctx_for

INSTS = ("ALF", "GEM", "IRIS")


def _deploy(project: Path, latency: float = 0.01) -> tuple[object, runner.FleetResult]:
    def slow(step: Step) -> None:
        time.sleep(latency)

    ctx = ctx_for(project, fault=slow)
    res = deploys.deploy(ctx, [ctx.inventory.instrument(n) for n in INSTS], "2026C3.1", runner.Options())
    assert not res.summary.names("failed")
    return ctx, res


def test_calibrate_writes_a_model_of_what_the_run_measured(project: Path, tmp_path: Path) -> None:
    ctx, res = _deploy(project)
    phases = res.record["phases"]
    assert set(phases) == set(INSTS) and all(p["stop"] > 0 and p["check"] > 0 for p in phases.values())
    cal = calibrating.calibrate(ctx, res.id)  # by run id, as the HTML report suggests
    assert cal.kind == "deploy" and cal.instruments == len(INSTS)
    assert cal.model.vm_stop_s == pytest.approx(sum(p["stop"] for p in phases.values()) / len(INSTS))
    assert cal.model.health_check_s == pytest.approx(sum(p["check"] for p in phases.values()) / len(INSTS))
    assert 0 < cal.model.vm_boot_s < 5 and cal.model.host_disk_mb_s == TimeModel().host_disk_mb_s
    out = tmp_path / "model.yaml"
    out.write_text(cal.yaml_text())
    loaded = TimeModel.load(out)  # what --model= reads back
    for key in ("plan_s", "vm_stop_s", "var_backup_gb", "disk_ops_s", "vm_boot_s", "guest_config_s",
                "health_check_s"):
        assert getattr(loaded, key) == pytest.approx(getattr(cal.model, key), abs=1e-3), key
    # the model predicts lengths of the lab's order, not the defaults' hours
    plan = deploys.plan_deploy(ctx, [ctx.inventory.instrument(n) for n in INSTS], "2026C3.1",
                               runner.Options(force=True), TimeModel.load(out))
    assert plan.prediction.makespan < 60


def test_calibrate_refuses_a_report_without_real_measurements(project: Path) -> None:
    ctx, res = _deploy(project, latency=0)
    with pytest.raises(InputError, match="no such report") as err:
        calibrating.calibrate(ctx, "deploy-19990101T000000-000000")
    assert err.value.field == "--from"
    record = json.loads(res.report_json.read_text())
    partial = res.report_json.with_name("partial.json")
    partial.write_text(json.dumps({**record, "phases": {}}))
    with pytest.raises(InputError, match="no real measurements"):
        calibrating.calibrate(ctx, str(partial))
    partial.write_text(json.dumps({**record, "kind": "apply-settings"}))
    with pytest.raises(InputError, match="not of a deploy, prepare or switch") as kind:
        calibrating.calibrate(ctx, str(partial))
    assert kind.value.field == "kind"
    partial.write_text("{ not json")
    with pytest.raises(InputError, match="cannot be read"):
        calibrating.calibrate(ctx, str(partial))


def test_a_report_over_a_damaged_record_draws_what_it_can_and_says_what_is_missing(project: Path) -> None:
    ctx, res = _deploy(project, latency=0)
    damaged = {k: v for k, v in res.record.items() if k not in ("started", "prediction")}
    damaged["results"] = {"ALF": res.record["results"]["ALF"]}  # the others' results were lost
    page = render_run(measured(damaged, ctx.journal, {n: "HVHOST01" for n in INSTS}))
    assert "Not shown: the run&#39;s start time" in page
    assert page.count('class="bar ') > 0  # ALF's bars (and the others' steps) are still drawn
    without_journal = render_run(measured(res.record, None, {}))
    assert "Not shown: the journal: no step times, so no bars" in without_journal
    assert "GEM" in without_journal and 'class="bar ' not in without_journal
