"""Two-phase deploys (issue 14): prepare beside the running instrument, switch in the downtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaging.core.errors import ImagingError, InputError, ValidationFailed
from imaging.engine.runner import Options
from imaging.model import layout
from imaging.ops import facts
from imaging.ops import prepare as preparing
from imaging.ops import reimage as reimaging
from imaging.ops import switch as switching
from imaging.ops.context import Context
from imaging.ops.status import fleet_status
from imaging.providers.lab.faults import InjectedFault
from tests.cli.test_cli import inv
from tests.ops.test_failed_undo import _ctx
from tests.ops.test_reimage import fail_nth_plan_step, put_user_data, user_data

OLD, NEW = "2026C3.0", "2026C3.1"
PREPARE_LEN = 9  # preflight, lock, OS child, Apps child, Settings disk, settings files, first boot, the host's
# note of the prepared generation, unlock


def _power_history(ctx: Context, name: str) -> list[dict]:
    inst = ctx.inventory.instrument(name)
    vm = ctx.providers.lab.lab / "hosts" / inst.host / "vms" / f"{inst.vm}.json"
    return json.loads(vm.read_text()).get("power_history", [])


def _running(ctx: Context, name: str = "ZOOM") -> tuple[str | None, dict[str, str]]:
    inst = ctx.inventory.instrument(name)
    return facts.running_release(ctx, inst), dict(facts.observe(ctx, inst).disks)


def test_prepare_never_touches_the_running_vm_and_switch_puts_the_release_in_place(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", OLD).ok
    put_user_data(ctx)
    data, history, (release, disks) = user_data(ctx), _power_history(ctx, "ZOOM"), _running(ctx)
    zoom = ctx.inventory.instrument("ZOOM")

    out = preparing.prepare(ctx, zoom, NEW)
    assert out.outcome is not None and out.outcome.ok, out
    assert _power_history(ctx, "ZOOM") == history  # never stopped, never started
    assert _running(ctx) == (release, disks) and user_data(ctx) == data  # nothing attached, nothing changed
    ready = facts.prepared(ctx, zoom)
    assert ready is not None and ready.release == NEW
    for path in ready.new.values():
        assert (ctx.providers.lab.path(zoom.host, path) / "disk.json").exists()
    [row] = fleet_status(ctx, ["ZOOM"])
    assert row.prepared == f"{NEW} ({ready.generation})" and row.running == OLD
    again = preparing.prepare(ctx, zoom, NEW)
    assert again.outcome is None and "already prepared" in again.note  # a no-op

    done = switching.switch(ctx, zoom)
    assert done.ok, done
    assert _running(ctx)[0] == NEW and user_data(ctx) == data
    attached = set(facts.observe(ctx, zoom).disks.values())
    assert set(ready.new.values()) <= attached  # exactly the prepared disks
    assert facts.prepared(ctx, zoom) is None
    steps = [s.action for s in ctx.journal.steps(done.op_id)]
    assert "create_child_disk" not in steps and "write_settings" not in steps  # made during prepare
    configure = [s for s in ctx.journal.steps(done.op_id) if s.action == "configure_guest"]
    assert configure[0].changed is False  # the first boot applied the injected configuration: only a check
    [row] = fleet_status(ctx, ["ZOOM"])
    assert row.recorded == row.running == NEW
    with pytest.raises(InputError, match="invoke prepare --release="):
        switching.switch(ctx, zoom)  # nothing prepared any more


def test_switch_refuses_an_unprepared_or_outdated_instrument_naming_the_prepare_command(project: Path) -> None:
    ctx = _ctx(project)
    for name in ("ZOOM", "ALF"):
        assert reimaging.reimage(ctx, name, OLD).ok
    zoom, alf = ctx.inventory.instrument("ZOOM"), ctx.inventory.instrument("ALF")
    with pytest.raises(ValidationFailed) as err:
        switching.check_switchable(ctx, [zoom, alf], "prepared")
    text = str(err.value)
    assert "ZOOM has no prepared generation" in text and "ALF has no prepared generation" in text
    assert "invoke prepare --release=" in text

    assert preparing.prepare(ctx, zoom, NEW).outcome.ok
    settings = project / "instruments" / "fleet" / "ZOOM.yaml"
    settings.write_text(settings.read_text() + "variables:\n  extra_note: changed after prepare\n")
    ctx = _ctx(project)
    with pytest.raises(InputError) as err:
        switching.switch(ctx, ctx.inventory.instrument("ZOOM"))
    assert "settings changed since it was prepared" in str(err.value) or "cannot be rendered" in str(err.value)
    assert f"invoke prepare --release={NEW} --instruments=ZOOM" in err.value.fix
    assert _running(ctx)[0] == OLD


@pytest.mark.parametrize("index", range(PREPARE_LEN))
def test_a_fault_at_every_prepare_step_leaves_the_running_instrument_untouched(project: Path, index: int) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", OLD).ok
    put_user_data(ctx)
    data, history, running = user_data(ctx), _power_history(ctx, "ZOOM"), _running(ctx)
    zoom = ctx.inventory.instrument("ZOOM")
    plan = reimaging.plan_phase(ctx, zoom, NEW, op_id="0" * 12, allow_dirty=False, dry_run=True,
                                capture_drift=False, settings_ref="HEAD", hotfixes=(), phase="prepare")
    actions = [s.action for s in plan.steps]
    assert len(actions) == PREPARE_LEN
    broken = _ctx(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = preparing.prepare(broken, broken.inventory.instrument("ZOOM"), NEW)
    assert out.outcome is not None and not out.outcome.ok and out.outcome.restored, out
    assert _power_history(ctx, "ZOOM") == history and _running(ctx) == running and user_data(ctx) == data
    assert facts.prepared(ctx, zoom) is None
    folder = ctx.providers.lab.path(zoom.host, layout.disk_path(ctx.inventory.host_of(zoom), zoom, "var")).parent
    assert not [p.name for p in folder.iterdir() if NEW in p.name]  # the partial generation is gone
    assert preparing.prepare(ctx, zoom, NEW).outcome.ok  # and prepare again works


def test_switch_to_previous_returns_with_the_hotfixes_it_carried(project: Path) -> None:
    from tests.ops.test_hotfix import apps_tree, make_pkg

    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", OLD).ok
    from imaging.ops import hotfix as hotfixing

    pkg = make_pkg(project.parent, applies=(OLD,))
    assert hotfixing.hotfix(ctx, ["ZOOM"], pkg).outcomes["ZOOM"].ok
    with_fix = apps_tree(ctx)
    zoom = ctx.inventory.instrument("ZOOM")
    assert preparing.prepare(ctx, zoom, NEW, drop_hotfixes=("HF-001",)).outcome.ok
    assert switching.switch_fleet(ctx, [zoom], Options(canary="")).summary.names("ok") == ["ZOOM"]
    assert _running(ctx)[0] == NEW
    back = switching.switch_fleet(ctx, [zoom], Options(canary=""), to="previous")
    assert back.summary.names("ok") == ["ZOOM"], back.rows
    assert _running(ctx)[0] == OLD and apps_tree(ctx) == with_fix
    assert "HF-001" in facts.carried(ctx, zoom).hotfixes


def test_prepare_then_switch_a_group_from_the_command_line(project: Path) -> None:
    res = inv(project, "deploy", f"--release={OLD}", "--group=A", "--yes", "--canary=none")
    assert res.returncode == 0, res.stdout + res.stderr
    ctx = _ctx(project)
    group = [i.name for i in ctx.inventory.select(group="A")]
    before = {n: _power_history(ctx, n) for n in group}
    res = inv(project, "prepare", f"--release={NEW}", "--group=A", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {n: _power_history(ctx, n) for n in group} == before  # no VM stopped while preparing
    assert all(facts.running_release(ctx, ctx.inventory.instrument(n)) == OLD for n in group)
    res = inv(project, "status")
    assert f"{NEW} (" in res.stdout
    res = inv(project, "switch", "--group=A", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    ctx = _ctx(project)
    assert all(facts.running_release(ctx, ctx.inventory.instrument(n)) == NEW for n in group)
    res = inv(project, "switch", "--group=A", "--yes")
    assert res.returncode != 0 and "invoke prepare --release=" in res.stderr
    with pytest.raises(ImagingError):
        preparing.refuse_unprepared(ctx, ctx.inventory.instrument(group[0]))


def test_a_backup_writes_only_what_changed_since_the_last_verified_one(project: Path) -> None:
    """Incremental Var backups on the lab: files identical to the last verified backup are linked from it;
    every backup still holds every file, byte for byte (it is verified against the volume)."""
    from imaging.core.hashing import tree_manifest

    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", OLD).ok
    put_user_data(ctx)
    assert reimaging.reimage(ctx, "ZOOM", NEW).ok
    zoom = ctx.inventory.instrument("ZOOM")
    ctx.providers.lab.guest_write(zoom.host, zoom.vm, r"C:\Instrument\Var\autosave\motors.sav", b"theta=13.0\n")
    assert preparing.prepare(ctx, zoom, OLD, force=True).outcome.ok
    out = switching.switch(ctx, zoom)
    assert out.ok
    [var_backup] = [s for s in ctx.journal.steps(out.op_id)
                    if s.action == "backup_volume" and s.phase == "do" and "-var" in s.result["path"]]
    folder = ctx.providers.lab.path(zoom.host, var_backup.result["path"])
    base = folder.parent / json.loads((folder / "manifest.json").read_text())["base"]
    same, changed = Path("db/exp.sqlite"), Path("autosave/motors.sav")
    assert (folder / "content" / same).stat().st_ino == (base / "content" / same).stat().st_ino  # linked
    assert (folder / "content" / changed).stat().st_ino != (base / "content" / changed).stat().st_ino  # written
    assert 1 <= var_backup.result["linked"] < var_backup.result["files"]
    var = ctx.providers.lab.path(zoom.host, layout.disk_path(ctx.inventory.host_of(zoom), zoom, "var"))
    assert tree_manifest(folder / "content") == json.loads((folder / "manifest.json").read_text())["files"]
    assert (folder / "content" / "autosave" / "motors.sav").read_bytes() == b"theta=13.0\n"
    assert (var / "content" / "autosave" / "motors.sav").stat().st_ino != \
        (folder / "content" / "autosave" / "motors.sav").stat().st_ino  # never shares a file with the volume


def test_a_fleet_switch_killed_midway_resumes_and_nothing_is_done_twice(project: Path) -> None:
    names = ["ALF", "GEM", "IRIS", "HRPD"]
    res = inv(project, "deploy", f"--release={OLD}", f"--instruments={','.join(names)}", "--yes", "--canary=none")
    assert res.returncode == 0, res.stdout + res.stderr
    res = inv(project, "prepare", f"--release={NEW}", f"--instruments={','.join(names)}", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    env_kill = {"IMAGING_LAB_FAULTS": "*:start_vm#3@kill-after"}  # the third switch, once its VM started
    killed = _inv_env(project, env_kill, "switch", f"--instruments={','.join(names)}", "--yes", "--canary=none",
                      "--parallel=1")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    ctx = _ctx(project)
    on_new = [n for n in names if facts.running_release(ctx, ctx.inventory.instrument(n)) == NEW]
    assert len(on_new) == 2, on_new  # two switched, the third interrupted, the fourth not started
    res = inv(project, "switch", "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    ctx = _ctx(project)
    [run] = ctx.runs.all("switch")
    for n in names:
        inst = ctx.inventory.instrument(n)
        assert facts.running_release(ctx, inst) == NEW
        ops = [o for o in ctx.journal.operations(instrument=n, batch=run["id"])]
        assert [o.status for o in ops] == ["ok"], (n, ops)  # one switch each: resumed, never started again
        gens = {p.rsplit("-", 1)[-1] for role, p in facts.observe(ctx, inst).disks.items() if role in (0, 1, 2)}
        assert len(gens) == 1  # OS, Apps and Settings of one generation


def _inv_env(project: Path, env: dict[str, str], *args: str):  # noqa: ANN202
    import os
    import subprocess
    import sys

    from tests.cli.test_cli import ROOT

    exe = Path(sys.executable).with_name("invoke")
    return subprocess.run([str(exe), "--search-root", str(ROOT), *args], capture_output=True, text=True,
                          env={**os.environ, "IMAGING_ROOT": str(project), "COLUMNS": "200", **env}, timeout=300)


SWITCH_LEN = 23  # the switch of a running, prepared ZOOM: the reimage's 27 steps minus the five prepare did,
# and the removal of the host's note of the prepared generation


@pytest.mark.parametrize("index", range(SWITCH_LEN))
def test_a_fault_at_every_switch_step_leaves_what_ran_before_and_the_preparation(project: Path, index: int) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", OLD).ok
    put_user_data(ctx)
    zoom = ctx.inventory.instrument("ZOOM")
    assert preparing.prepare(ctx, zoom, NEW).outcome.ok
    ready = facts.prepared(ctx, zoom)
    data, running = user_data(ctx), _running(ctx)
    plan = reimaging.plan_phase(ctx, zoom, NEW, op_id="0" * 12, allow_dirty=False, dry_run=True,
                                capture_drift=False, settings_ref="HEAD", hotfixes=(), phase="switch",
                                generation=ready.generation, prepared_by=ready.op.id)
    actions = [s.action for s in plan.steps]
    assert len(actions) == SWITCH_LEN, actions
    action = actions[index]
    broken = _ctx(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = switching.switch(broken, broken.inventory.instrument("ZOOM"))
    assert not out.ok and out.restored and out.failed_step == action, out
    assert _running(ctx) == running and user_data(ctx) == data  # exactly what ran before
    assert facts.prepared(ctx, zoom) == ready  # the preparation waits, whole
    assert switching.switch(ctx, zoom).ok  # and the switch works once the fault is gone


def test_preparing_another_release_replaces_the_prepared_disks_and_retention_keeps_them(project: Path) -> None:
    from imaging.ops import releases as releasing

    ctx = _ctx(project)
    zoom = ctx.inventory.instrument("ZOOM")

    def exists(path: str) -> bool:
        return (ctx.providers.lab.path(zoom.host, path) / "disk.json").exists()

    for release in (OLD, NEW, OLD):  # three generations: retention drops the oldest one
        assert reimaging.reimage(ctx, "ZOOM", release, force=True).ok
    assert preparing.prepare(ctx, zoom, NEW).outcome.ok
    first = facts.prepared(ctx, zoom)
    deleted = reimaging.retire_old_generations(ctx, zoom)
    assert not set(first.new.values()) & set(deleted) and all(exists(p) for p in first.new.values())
    assert preparing.prepare(ctx, zoom, OLD, force=True).outcome.ok  # another release: it replaces the first
    second = facts.prepared(ctx, zoom)
    assert second.release == OLD and second.generation != first.generation
    assert not any(exists(p) for p in first.new.values()) and all(exists(p) for p in second.new.values())
    assert preparing.prepare(ctx, zoom, NEW).outcome.ok
    releasing.revoke(ctx, release=NEW, reason="bad detector map", dry_run=False)
    ctx = _ctx(project)
    with pytest.raises(InputError) as err:
        switching.switch(ctx, ctx.inventory.instrument("ZOOM"))
    assert "release 2026C3.1 is revoked (bad detector map)" in str(err.value)
    assert "invoke prepare --release=2026C3.1 --instruments=ZOOM" in err.value.fix
