"""Fleet deploys: waves, limits, failures restored, max-fail-percent, resume after a kill, two deploys at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imaging.core.config import Paths
from imaging.core.errors import InputError
from imaging.core.hashing import tree_manifest
from imaging.engine import runner
from imaging.engine.scheduler import FAILED, NOT_STARTED, Job, Limits, parse_batches, plan_waves, run_waves
from imaging.engine.simulate import SimRunner, TimeModel, predict
from imaging.model.steps import Step
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import hotfix as hotfixing
from imaging.ops import publish as publishing
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.providers.lab.faults import InjectedFault
from imaging.state.journal import OK, Journal

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "2026C3.0", "2026C3.1"


def ctx_for(project: Path, **kw: object) -> Context:
    ctx = Context.load(Paths.from_env(project), **kw)
    ctx.sample_sizes = (120, 80)
    return ctx


def faults(plan: dict[str, str]):  # noqa: ANN201
    """A fault hook failing ``action`` on the VM of each instrument named in ``plan`` (name -> action)."""
    pairs = {(f"NDX{name}", action) for name, action in plan.items()}

    def hook(step: Step) -> None:
        vm = str(step.inputs.get("vm", ""))
        if (vm, step.action) in pairs:
            raise InjectedFault(f"injected failure of {step.action} on {vm}", host=step.host, step=step.action)

    return hook


def user_data(ctx: Context, name: str) -> dict[str, str]:
    inst = ctx.inventory.instrument(name)
    host = ctx.inventory.host_of(inst)
    base = ctx.providers.lab.path(inst.host, rf"{host.storage_root}\instruments\{inst.vm}")
    var = tree_manifest(base / f"{inst.vm}-var.vhdx" / "content", exclude=("imaging", "rescued"))
    data = tree_manifest(base / f"{inst.vm}-data.vhdx" / "content")
    return {**{f"var/{k}": v for k, v in var.items()}, **{f"data/{k}": v for k, v in data.items()}}


def host_concurrency(journal: Journal, batch: str) -> dict[str, int]:
    """From the journal's step times: the most operations of this deploy running at once on each host."""
    spans: dict[str, list[tuple[str, int]]] = {}
    for op in journal.operations(batch=batch):
        steps = journal.steps(op.id)
        start = min(s.started for s in steps)
        end = max(s.ended or s.started for s in steps)
        spans.setdefault(op.host, []).extend([(start, 1), (end, -1)])
    peak = {}
    for host, marks in spans.items():
        n = best = 0
        for _, d in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at the same instant
            n += d
            best = max(best, n)
        peak[host] = best
    return peak


def slow(seconds: float):  # noqa: ANN201
    def hook(step: Step) -> None:
        time.sleep(seconds)

    return hook


# --- the scheduler, pure ---------------------------------------------------------------------------------


def test_batches_parse_and_bad_input_names_the_option() -> None:
    assert [str(b) for b in parse_batches("1,5,20%")] == ["1", "5", "20%"]
    for bad in ("0", "x", "5,,2", "150%"):
        with pytest.raises(InputError) as e:
            parse_batches(bad)
        assert "--batches" in str(e.value)


def test_waves_canary_first_then_widening_batches() -> None:
    jobs = [Job(f"I{i:02d}", f"H{i % 3}") for i in range(20)]
    waves = plan_waves(jobs, canary="I07", batches=parse_batches("1,5,20%"))
    assert [len(w) for w in waves] == [1, 1, 5, 4, 4, 4, 1]
    assert waves[0][0].name == "I07"
    assert sorted(j.name for w in waves for j in w) == sorted(j.name for j in jobs)
    assert plan_waves(jobs, canary=None, batches=[])[0][0].name == "I00"
    assert len(plan_waves(jobs, canary="", batches=[])) == 1
    with pytest.raises(InputError):
        plan_waves(jobs, canary="NOPE", batches=[])


def test_simulated_run_respects_global_and_host_limits() -> None:
    jobs = [Job(f"I{i:02d}", f"H{i % 4}", 1.0) for i in range(24)]
    limits = Limits(parallel=5, per_host={"H0": 1, "H1": 2, "H2": 3, "H3": 3})
    runner = SimRunner(TimeModel())
    running: dict[str, str] = {}
    peak_host: dict[str, int] = {}
    peak = 0

    def observe(ev) -> None:  # noqa: ANN001
        nonlocal peak
        if ev.kind == "job_start":
            running[ev.job.name] = ev.job.host
        elif ev.kind == "job_end":
            running.pop(ev.job.name)
        for h in set(running.values()):
            peak_host[h] = max(peak_host.get(h, 0), list(running.values()).count(h))
        peak = max(peak, len(running))

    s = run_waves(plan_waves(jobs, canary="", batches=[]), runner, limits, observe=observe)
    assert s.names("ok") and len(s.names("ok")) == 24
    assert peak == 5
    assert all(peak_host[h] <= limits.per_host[h] for h in peak_host)
    assert peak_host["H0"] == 1


def test_simulated_max_fail_stops_new_starts_and_running_ones_finish() -> None:
    jobs = [Job(f"I{i:02d}", f"H{i % 2}", 1.0) for i in range(10)]
    limits = Limits(parallel=2, per_host={"H0": 2, "H1": 2}, max_fail_percent=20)
    runner = SimRunner(TimeModel(host_disk_overrides={"H1": 50}), failing={"I00", "I02", "I04"})  # H1 is slow
    events = []
    s = run_waves(plan_waves(jobs, canary="", batches=parse_batches("8")), runner, limits, observe=events.append)
    assert s.stopped and "--max-fail-percent=20" in s.stopped
    stop = next(i for i, e in enumerate(events) if e.kind == "stop")
    started = {e.job.name for e in events[:stop] if e.kind == "job_start"}
    ended_before = {e.job.name for e in events[:stop] if e.kind == "job_end"}
    running_at_stop = started - ended_before
    assert running_at_stop, "the test needs a job running when the limit is exceeded"
    assert not any(e.kind == "job_start" for e in events[stop:])  # no new start after the stop
    assert all(s.status(n) != NOT_STARTED for n in running_at_stop)  # running ones finished
    assert len(s.names(FAILED)) * 100 > 20 * 8
    assert s.status("I08") == s.status("I09") == NOT_STARTED  # the next wave never started
    assert len(s.results) == len(started) < 10


def test_prediction_is_at_least_the_lower_bound_and_finishes_everything() -> None:
    hosts = [f"H{i}" for i in range(6)]
    jobs = [Job(f"I{i:02d}", hosts[i % 6], TimeModel().alone_s(hosts[i % 6], staged=False)) for i in range(30)]
    limits = Limits(parallel=8, per_host={h: 3 for h in hosts})
    for staged in (True, False):
        p = predict(plan_waves(jobs, canary="", batches=[]), TimeModel(staged=staged), limits)
        assert len(p.summary.names("ok")) == 30
        assert p.makespan >= p.lower_bound - 1e-6
    unstaged = predict(plan_waves(jobs, canary="", batches=[]), TimeModel(staged=False), limits)
    staged_p = predict(plan_waves(jobs, canary="", batches=[]), TimeModel(staged=True), limits)
    assert unstaged.makespan > staged_p.makespan and "share" in unstaged.utilisation


def test_time_model_file_overrides_and_rejects_unknown_keys(tmp_path: Path) -> None:
    f = tmp_path / "model.yaml"
    f.write_text("vm_boot_s: 10\nhost_disk_overrides: {H1: 100}\nstaged: false\n")
    m = TimeModel.load(f)
    assert m.vm_boot_s == 10 and m.disk_bps("H1") == 100e6 and not m.staged
    f.write_text("vm_boot: 10\n")
    with pytest.raises(InputError) as e:
        TimeModel.load(f)
    assert "vm_boot" in str(e.value) and str(f) in str(e.value)


# --- the lab: whole deploys --------------------------------------------------------------------------------


def test_fleet_deploy_with_three_failures(project: Path) -> None:
    ctx = ctx_for(project)
    group = facts.select(ctx, everything=True)
    assert len(group) >= 30  # the whole shipped fleet
    first = deploys.deploy(ctx, group, OLD, runner.Options(parallel=8))
    assert sorted(first.summary.names("ok")) == sorted(i.name for i in group)
    chosen = {"LET": "configure_guest", "MAPS": "health_check", "GEM": "wait_guest"}
    for name in chosen:
        inst = ctx.inventory.instrument(name)
        ctx.providers.lab.guest_write(inst.host, inst.vm, r"C:\Instrument\Var\autosave\motors.sav", b"theta=1\n")
        ctx.providers.lab.guest_write(inst.host, inst.vm, rf"C:\data\{name}00001.nxs", b"\x89HDF" + b"\x02" * 999)
    before = {n: user_data(ctx, n) for n in chosen}
    assert all(len(v) == 2 for v in before.values())

    fctx = ctx_for(project, fault=faults(chosen))
    res = deploys.deploy(fctx, facts.select(fctx, everything=True), NEW,
                       runner.Options(parallel=8, batches="1,5,20%", max_fail_percent=100))
    assert res.summary.stopped is None
    for inst in group:
        now = facts.running_release(fctx, inst)
        assert now == (OLD if inst.name in chosen else NEW), inst.name
    for name in chosen:
        assert user_data(fctx, name) == before[name]
        assert facts.instrument_record(fctx, fctx.inventory.instrument(name))["release"] == OLD

    report = json.loads(res.report_json.read_text())
    failed = {n: r for n, r in report["results"].items() if r["status"] == FAILED}
    assert set(failed) == set(chosen)
    for name, action in chosen.items():
        assert failed[name]["step"] == action
        assert f"injected failure of {action}" in failed[name]["detail"]
        assert report["before"][name] == OLD and report["after"][name] == OLD
    assert report["after"]["ALF"] == NEW and report["user"] and report["release"] == NEW
    md = res.report_md.read_text()
    for name, action in chosen.items():
        assert name in md and action in md
    assert sorted(i.name for i in facts.select(fctx, instruments="@failed")) == sorted(chosen)
    # the journal holds the deploy id in every operation it started; host limits held
    ops = fctx.journal.operations(batch=res.id)
    assert sorted(o.instrument for o in ops) == sorted(i.name for i in group)
    peak = host_concurrency(fctx.journal, res.id)
    assert all(peak[h] <= fctx.inventory.hosts[h].max_concurrent for h in peak)


def _var(ctx: Context, name: str) -> tuple[str, str, str]:
    from imaging.model import layout

    inst = ctx.inventory.instrument(name)
    return inst.host, inst.vm, layout.disk_path(ctx.inventory.host_of(inst), inst, "var")


def test_host_limits_hold_with_slow_steps(project: Path) -> None:
    ctx = ctx_for(project, fault=slow(0.01))
    insts = [i for i in facts.select(ctx, group="B") if i.host in ("HVHOST04", "HVHOST06")]
    res = deploys.deploy(ctx, insts, OLD, runner.Options(parallel=8, canary=""))
    assert sorted(res.summary.names("ok")) == sorted(i.name for i in insts)
    peak = host_concurrency(ctx.journal, res.id)
    assert peak["HVHOST04"] <= 2 and peak["HVHOST06"] <= 4
    assert max(peak.values()) >= 2  # the deploy did run instruments side by side


def test_max_fail_percent_stops_new_starts_in_the_lab(project: Path) -> None:
    ctx = ctx_for(project)
    insts = facts.select(ctx, instruments="ALF,GEM,IRIS,MERLIN,POLARIS,TOSCA")  # all on HVHOST01
    bad = ctx_for(project, fault=faults({i.name: "health_check" for i in insts}))
    res = deploys.deploy(bad, insts, OLD, runner.Options(parallel=1, canary="", batches="4", max_fail_percent=30))
    assert res.summary.stopped and "more than --max-fail-percent=30" in res.summary.stopped
    statuses = {n: r["status"] for n, r in res.record["results"].items()}
    # 1 of 4 failed is 25% (go on), 2 of 4 is 50% (stop): exactly two started, the rest never did
    assert sorted(statuses.values()) == [FAILED, FAILED, NOT_STARTED, NOT_STARTED, NOT_STARTED, NOT_STARTED]
    assert len(bad.journal.operations(batch=res.id)) == 2
    assert res.record["status"] == "stopped"


DEPLOY_SCRIPT = textwrap.dedent("""
    import sys, time
    from imaging.core.config import Paths
    from imaging.engine import runner
    from imaging.ops import deploy as deploys
    from imaging.ops import facts
    from imaging.ops.context import Context
    names, release, delay, deploy_id = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    ctx = Context.load(Paths.from_env(), fault=lambda step: time.sleep(delay))
    ctx.sample_sizes = (120, 80)
    res = deploys.deploy(ctx, facts.select(ctx, instruments=names), release,
                       runner.Options(parallel=2, canary=""), deploy_id=deploy_id)
    print(res.id)
""")


def _spawn(project: Path, names: str, delay: float, deploy_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", DEPLOY_SCRIPT, names, OLD, str(delay), deploy_id],
                            cwd=ROOT, env={**os.environ, "IMAGING_ROOT": str(project), "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _prestage(ctx: Context, names: list[str]) -> None:
    for host in sorted({ctx.inventory.instrument(n).host for n in names}):
        publishing.publish(ctx, OLD, host)
        staging.stage(ctx, OLD, host)


def test_deploy_killed_midway_then_resumed_reimages_each_instrument_once(project: Path) -> None:
    names = ["ALF", "GEM", "IRIS", "CHIPIR", "HRPD", "LET", "EMMA", "INES"]
    ctx = ctx_for(project)
    _prestage(ctx, names)
    proc = _spawn(project, ",".join(names), 0.03, "deploy-killed-1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ops = ctx.journal.operations(batch="deploy-killed-1")
        if sum(o.status == OK for o in ops) >= 2 and any(o.status == "running" for o in ops):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ops = ctx.journal.operations(batch="deploy-killed-1")
    assert 2 <= sum(o.status == OK for o in ops) < len(names), "the kill did not land midway"
    assert deploys.resumable(ctx)["id"] == "deploy-killed-1"

    res = deploys.resume(ctx)
    assert res.id == "deploy-killed-1" and res.summary.stopped is None
    assert sorted(res.summary.names("ok")) == sorted(names)
    ops = ctx.journal.operations(batch="deploy-killed-1")
    assert sorted(o.instrument for o in ops) == sorted(names)  # one operation per instrument, never two
    assert all(o.status == OK for o in ops)
    for n in names:
        assert facts.running_release(ctx, ctx.inventory.instrument(n)) == OLD
        assert len(ctx.journal.operations(instrument=n, kind="reimage")) == 1
    assert ctx.runs.read("deploy-killed-1")["status"] == "finished"
    assert deploys.resumable(ctx) is None


def test_two_deploys_at_once_never_share_an_instrument(project: Path) -> None:
    first = ["ALF", "GEM", "IRIS", "MERLIN", "CHIPIR", "HRPD"]
    second = ["MERLIN", "CHIPIR", "HRPD", "LET", "EMMA", "INES"]
    ctx = ctx_for(project)
    _prestage(ctx, first + second)
    procs = [_spawn(project, ",".join(first), 0.02, "deploy-one"), _spawn(project, ",".join(second), 0.02,
                                                                          "deploy-two")]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    intervals: dict[str, list[tuple[str, str]]] = {}
    for batch in ("deploy-one", "deploy-two"):
        for op in ctx.journal.operations(batch=batch):
            intervals.setdefault(op.instrument, []).append((op.started, op.ended or "9999"))
    for name, spans in intervals.items():
        spans.sort()
        for (_, end_a), (start_b, _) in zip(spans, spans[1:], strict=False):
            assert end_a <= start_b, f"{name} was operated on by both deploys at once"
    for name in set(first) | set(second):
        assert facts.running_release(ctx, ctx.inventory.instrument(name)) == OLD
    recs = {r["id"]: r for r in ctx.runs.all()}
    for name in set(first) & set(second):
        outcomes = [recs[d]["results"][name] for d in ("deploy-one", "deploy-two")]
        assert sorted(o["status"] for o in outcomes) in (["ok", "skipped"], ["ok", "ok"])
        for o in outcomes:
            if o["status"] == "skipped":
                assert "busy" in o["detail"] or "already on" in o["detail"]
    assert not any(r["status"] == FAILED for rec in recs.values() for r in rec["results"].values())


def test_cli_deploy_plan_simulate_and_confirmation(project: Path) -> None:
    env = {**os.environ, "IMAGING_ROOT": str(project), "COLUMNS": "200"}
    exe = Path(sys.executable).with_name("invoke")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "invoke"]

    def inv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, "--search-root", str(ROOT), *args], capture_output=True, text=True, env=env,
                              timeout=300)

    out = inv("deploy", "--release=2026C3.0", "--group=A", "--dry-run", "--batches=1,5,20%")
    assert out.returncode == 0, out.stderr
    assert "Fleet plan" in out.stdout and "estimated duration" in out.stdout and "LET" in out.stdout
    assert "dry run: nothing was changed" in out.stdout
    sim = inv("deploy", "--release=2026C3.0", "--all", "--simulate", "--parallel=8")
    assert sim.returncode == 0, sim.stderr
    assert "predicted total duration" in sim.stdout and "critical resource" in sim.stdout
    no = inv("deploy", "--release=2026C3.0", "--instruments=ZOOM")
    assert no.returncode == 1 and "--yes" in no.stderr
    assert not (project / ".state" / "deploys").exists()
    bad = inv("deploy", "--release=2026C3.0", "--all", "--batches=0", "--dry-run")
    assert bad.returncode == 1 and "--batches" in bad.stderr


def test_stage_reports_progress_and_copies_once(project: Path) -> None:
    ctx = ctx_for(project)
    events: list[staging.StageEvent] = []
    publishing.publish(ctx, NEW, "HVHOST01", progress=events.append)
    first = staging.stage(ctx, NEW, "HVHOST01", progress=events.append)
    assert [r["changed"] for r in first] == [True, True] and all(r["bytes"] > 0 for r in first)
    assert {e.phase for e in events} == {"publish", "stage"}
    ended = [e for e in events if e.phase == "stage" and e.result is not None]
    assert sorted(e.artifact for e in ended) == sorted(r["name"] for r in first)
    again = staging.stage(ctx, NEW, "HVHOST01")
    assert [(r["changed"], r["bytes"]) for r in again] == [(False, 0), (False, 0)]
    assert staging.not_staged(ctx, NEW, "HVHOST01") == [] and len(staging.not_staged(ctx, NEW, "HVHOST02")) == 2


def test_fleet_plan_shows_dropped_hotfixes_migrations_and_staging(project: Path) -> None:
    from imaging.core.files import write_json
    from imaging.engine.simulate import TimeModel
    from imaging.model.record import seal

    ctx = ctx_for(project)
    res = deploys.deploy(ctx, facts.select(ctx, instruments="ALF"), OLD, runner.Options(parallel=1))
    assert res.summary.names("ok") == ["ALF"]
    host, vm, var = _var(ctx, "ALF")
    rec_file = ctx.providers.lab.path(host, var) / "content" / "imaging" / "record.json"
    record = json.loads(rec_file.read_text())
    write_json(rec_file, seal({**record, "hotfixes": [{"id": "HF-2026-007"}]}))  # a record another operator wrote
    [row] = deploys.plan_deploy(ctx, facts.select(ctx, instruments="ALF"), NEW, runner.Options(), TimeModel()).rows
    assert (row.now, row.after) == (OLD, NEW)
    assert row.hotfixes_dropped == ["HF-2026-007"]
    assert row.migrations == []  # 2026C3.0 and 2026C3.1 share settings format 5
    # an instrument whose settings branch is at format 3 (a settings repository): v3 -> v4 -> v5
    from imaging.core import git as gitrepo
    from tests.ops.test_reimage_settings import branch_repo

    srepo = branch_repo(project.parent, {"NDXWISH": {".imaging/settings-version": b"3\n"}})
    ctx.inventory = ctx.inventory.model_copy(update={"settings_repo": srepo})
    [wish] = deploys.plan_deploy(ctx, facts.select(ctx, instruments="WISH"), NEW, runner.Options(), TimeModel()).rows
    assert wish.now is None and len(wish.migrations) == 2 and all(m.startswith("m000") for m in wish.migrations)
    assert gitrepo.branch_exists(srepo, "NDXWISH")
    assert row.not_staged == [f"apps-{NEW}"]  # the OS template is shared with 2026C3.0, already there
    assert row.estimate_s > TimeModel().alone_s(host, staged=True)


def test_unstaged_hosts_pull_first_and_only_a_few_at_once() -> None:
    hosts = [f"H{i}" for i in range(6)]
    jobs = [Job(f"I{i:02d}", hosts[i % 6], 1.0, unstaged=True) for i in range(24)]
    limits = Limits(parallel=12, per_host={h: 3 for h in hosts}, pulls=2)
    runner = SimRunner(TimeModel(staged=False))
    running: dict[str, str] = {}
    pulled: set[str] = set()
    violations = []
    real_wait = runner.wait

    def wait():  # noqa: ANN202 - watch the PULLED reports go by
        out = real_wait()
        pulled.update(r.detail for r in out if r.status == "pulled")
        return out

    runner.wait = wait  # type: ignore[method-assign]

    def observe(ev) -> None:  # noqa: ANN001
        if ev.kind == "job_start":
            running[ev.job.name] = ev.job.host
            unpulled = [h for h in set(running.values()) if h not in pulled]
            if len(unpulled) > 2:
                violations.append(f"{len(unpulled)} hosts pulling at {ev.time}")
            if ev.job.host not in pulled and list(running.values()).count(ev.job.host) > 1:
                violations.append(f"second job on {ev.job.host} before its pull ended")
        elif ev.kind == "job_end":
            running.pop(ev.job.name)

    s = run_waves(plan_waves(jobs, canary="", batches=[]), runner, limits, observe=observe)
    assert len(s.names("ok")) == 24
    assert violations == []
    assert pulled == set(hosts)


def test_plan_names_a_hotfix_the_release_would_drop_and_the_deploy_refuses_it(project: Path) -> None:
    from imaging.engine import runner
    from imaging.engine.simulate import TimeModel
    from imaging.ops import deploy as deploys
    from imaging.ops import facts

    ctx = ctx_for(project)
    assert deploys.deploy(ctx, facts.select(ctx, instruments="ALF,GEM"), OLD, runner.Options()).summary.names("ok")
    example = ROOT / "hotfixes" / "examples" / "HF-2026C3-001"  # declared for 2026C3.0 only
    assert hotfixing.hotfix(ctx, ["ALF"], example).outcomes["ALF"].ok
    rows = {r.instrument: r for r in deploys.plan_deploy(ctx, facts.select(ctx, instruments="ALF,GEM"), NEW,
                                                         runner.Options(), TimeModel()).rows}
    assert rows["ALF"].hotfixes_dropped == ["HF-2026C3-001"] and rows["GEM"].hotfixes_dropped == []
    # refused as a whole, before any instrument is touched: no operation, no record, no disk changed
    n_ops, before = len(ctx.journal.operations()), {n: lab_disks(ctx, n) for n in ("ALF", "GEM")}
    n_recs = len(ctx.runs.all())
    with pytest.raises(InputError, match=r"ALF carries HF-2026C3-001.*--drop-hotfix=HF-2026C3-001"):
        deploys.deploy(ctx, facts.select(ctx, instruments="ALF,GEM"), NEW, runner.Options(canary="GEM"))
    assert len(ctx.journal.operations()) == n_ops and len(ctx.runs.all()) == n_recs
    assert {n: lab_disks(ctx, n) for n in ("ALF", "GEM")} == before
    # a dropped id nobody selected carries is a typo: refused too
    with pytest.raises(InputError, match="no selected instrument carries hotfix HF-TYPO"):
        deploys.deploy(ctx, facts.select(ctx, instruments="ALF,GEM"), NEW,
                     runner.Options(drop_hotfixes=("HF-2026C3-001", "HF-TYPO")))
    assert len(ctx.journal.operations()) == n_ops
    # dropped on purpose: every instrument moves (GEM carries nothing and is not told to drop anything)
    res = deploys.deploy(ctx, facts.select(ctx, instruments="ALF,GEM"), NEW,
                       runner.Options(canary="GEM", drop_hotfixes=("HF-2026C3-001",)))
    assert res.rows["GEM"]["status"] == "ok" and res.rows["ALF"]["status"] == "ok", res.rows
    assert facts.running_release(ctx, ctx.inventory.instrument("ALF")) == NEW
    assert hotfixing.list_hotfixes(ctx) == {}
    assert ctx.runs.read(res.id)["options"]["drop_hotfixes"] == ["HF-2026C3-001"]


def lab_disks(ctx: Context, name: str) -> dict[str, str]:
    """The instrument's disk folder as files and hashes (what a reimage would change)."""
    inst = ctx.inventory.instrument(name)
    host = ctx.inventory.host_of(inst)
    return tree_manifest(ctx.providers.lab.path(inst.host, rf"{host.storage_root}\instruments\{inst.vm}"))


def test_cli_deploy_refuses_a_lost_hotfix_after_the_plan_then_drops_it(project: Path) -> None:
    from imaging.engine import runner
    from imaging.ops import deploy as deploys
    from imaging.ops import facts
    from tests.cli.test_cli import inv

    ctx = ctx_for(project)
    assert deploys.deploy(ctx, facts.select(ctx, instruments="ALF"), OLD, runner.Options()).summary.names("ok")
    assert hotfixing.hotfix(ctx, ["ALF"], ROOT / "hotfixes" / "examples" / "HF-2026C3-001").outcomes["ALF"].ok
    ctx.close()
    res = inv(project, "deploy", f"--release={NEW}", "--instruments=ALF", "--yes")
    assert res.returncode == 1 and "--drop-hotfix=HF-2026C3-001" in res.stderr
    assert "HF-2026C3-001" in res.stdout  # the plan's column named it before the refusal
    res = inv(project, "deploy", f"--release={NEW}", "--instruments=ALF", "--yes", "--drop-hotfix=HF-2026C3-001")
    assert res.returncode == 0, res.stderr
    assert "dropped on purpose" in res.stdout
    ctx = ctx_for(project)
    assert facts.running_release(ctx, ctx.inventory.instrument("ALF")) == NEW


def test_a_failed_canary_stops_the_deploy_by_default(project: Path) -> None:
    """Issue 16, item 7: with the defaults, LET failing as canary leaves WISH (and every other) untouched;
    a later wave stops once more than 10% of it failed; --max-fail-percent=100 keeps going on purpose."""
    ctx = ctx_for(project)
    insts = facts.select(ctx, instruments="LET,WISH,ALF")
    bad = ctx_for(project, fault=faults({"LET": "health_check"}))
    res = deploys.deploy(bad, insts, OLD, runner.Options(canary="LET"))
    assert res.summary.stopped and "1 of 1 failed (LET)" in res.summary.stopped
    assert {n: r["status"] for n, r in res.record["results"].items()} == \
        {"LET": FAILED, "WISH": NOT_STARTED, "ALF": NOT_STARTED}
    assert facts.running_release(bad, ctx.inventory.instrument("WISH")) is None
    again = deploys.deploy(ctx_for(project, fault=faults({"LET": "health_check"})), insts, OLD,
                           runner.Options(canary="LET", max_fail_percent=100))
    assert again.summary.stopped is None and sorted(again.summary.names("ok")) == ["ALF", "WISH"]


def test_the_plan_prints_the_abort_rule(project: Path) -> None:
    from imaging.engine.scheduler import abort_rule

    assert "the canary LET must succeed before any other instrument starts" in abort_rule(10, "LET")
    assert "more than 10% of it failed" in abort_rule(10, "LET") and "none" in abort_rule(100, "LET")
    env = {**os.environ, "IMAGING_ROOT": str(project), "COLUMNS": "200"}
    exe = Path(sys.executable).with_name("invoke")
    out = subprocess.run([str(exe), "--search-root", str(ROOT), "deploy", "--release=2026C3.0",
                          "--instruments=LET,WISH", "--canary=LET", "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("abort rule: the canary LET must succeed before any other instrument starts; after it, a wave stops "
            "starting instruments once more than 10% of it failed") in out.stdout


def test_uncommitted_inventory_variables_are_refused_by_deploy_or_deployed_marked_dirty(project: Path) -> None:
    """Issue 17, item 4: a variable changed in the inventory but not committed is not what git holds: a
    deploy refuses it before any change unless --allow-dirty, which it records; the provenance says dirty."""
    fleet = project / "instruments" / "fleet" / "ZOOM.yaml"
    fleet.write_text(fleet.read_text().replace("detector_banks: 10", "detector_banks: 11"))
    ctx = ctx_for(project)
    zoom = facts.select(ctx, instruments="ZOOM")
    with pytest.raises(InputError) as err:
        deploys.deploy(ctx, zoom, OLD, runner.Options(canary=""))
    assert "instruments/fleet/ZOOM.yaml" in str(err.value) and err.value.field == "--allow-dirty"
    assert ctx.journal.operations() == []
    res = deploys.deploy(ctx, zoom, OLD, runner.Options(canary="", allow_dirty=True))
    assert res.summary.names("ok") == ["ZOOM"] and res.record["options"]["allow_dirty"] is True
    inst = ctx.inventory.instrument("ZOOM")
    provenance = json.loads(ctx.providers.lab.guest_path(
        inst.host, inst.vm, r"C:\Instrument\Settings\.imaging\provenance.json").read_text())
    assert provenance["dirty"] is True and "inventory:instruments/fleet/ZOOM.yaml" in provenance["dirty_paths"]
    assert provenance["variables"]["detector_banks"] == 11
