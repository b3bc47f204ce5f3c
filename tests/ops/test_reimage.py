"""Reimage one instrument end to end on the lab provider."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from imaging.core.config import Paths
from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import tree_manifest
from imaging.model.steps import Step
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from imaging.ops.context import Context
from imaging.ops.status import fleet_status
from imaging.providers.lab.faults import InjectedFault

TOOL_OWNED_ON_VAR = ("imaging", "rescued")


def ctx_for(project: Path, **kw: object) -> Context:
    ctx = Context.load(Paths.from_env(project), **kw)
    ctx.sample_sizes = (120, 80)
    return ctx


def var_dir(ctx: Context, name: str = "ZOOM") -> Path:
    inst = ctx.inventory.instrument(name)
    host = ctx.inventory.host_of(inst)
    return ctx.providers.lab.path(inst.host, rf"{host.storage_root}\instruments\{inst.vm}\{inst.vm}-var.vhdx") \
        / "content"


def data_dir(ctx: Context, name: str = "ZOOM") -> Path:
    return var_dir(ctx, name).parent.parent / f"{ctx.inventory.instrument(name).vm}-data.vhdx" / "content"


def user_data(ctx: Context, name: str = "ZOOM") -> dict[str, str]:
    """Var and Data as the instrument's users own them (the tool's own record and rescue folders aside)."""
    var = tree_manifest(var_dir(ctx, name), exclude=TOOL_OWNED_ON_VAR)
    data = tree_manifest(data_dir(ctx, name))
    return {**{f"var/{k}": v for k, v in var.items()}, **{f"data/{k}": v for k, v in data.items()}}


def put_user_data(ctx: Context, name: str = "ZOOM") -> None:
    inst = ctx.inventory.instrument(name)
    lab = ctx.providers.lab
    lab.guest_write(inst.host, inst.vm, r"C:\Instrument\Var\autosave\motors.sav", b"theta=12.5\n")
    lab.guest_write(inst.host, inst.vm, r"C:\Instrument\Var\db\exp.sqlite", bytes(range(256)) * 40)
    lab.guest_write(inst.host, inst.vm, r"C:\data\ZOOM00012345.nxs", b"\x89HDF" + b"\x01" * 5000)


def test_reimage_fresh_then_status_shows_release(project: Path) -> None:
    ctx = ctx_for(project)
    out = reimaging.reimage(ctx, "ZOOM")
    assert out.ok, out.error
    [row] = fleet_status(ctx, ["ZOOM"])
    assert row.running == row.desired == "2026C3.0"
    assert row.power == "Running" and row.pending == ""
    record = facts.instrument_record(ctx, ctx.inventory.instrument("ZOOM"))
    assert record["release"] == "2026C3.0"


def test_reimage_twice_keeps_var_and_data_byte_for_byte(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    put_user_data(ctx)
    before = user_data(ctx)
    assert len(before) == 3
    assert reimaging.reimage(ctx, "ZOOM", force=True).ok
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    assert user_data(ctx) == before


def test_user_file_on_os_disk_is_rescued_and_named(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    ctx.providers.lab.guest_write("HVHOST04", "NDXZOOM", r"C:\Users\operator\Desktop\shift-notes.txt", b"notes")
    events = []
    out = reimaging.reimage(ctx, "ZOOM", listener=events.append, force=True)
    assert out.ok
    rescue = [e for e in events if e.step.action == "rescue_user_files" and e.ok]
    assert rescue[0].result["files"] == ["Users/operator/Desktop/shift-notes.txt"]
    stamp_dirs = list((var_dir(ctx) / "rescued").iterdir())
    assert (stamp_dirs[0] / "files/Users/operator/Desktop/shift-notes.txt").read_bytes() == b"notes"


def test_dry_run_changes_nothing(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    state = project / ".state"
    before = tree_manifest(state, exclude=("locks",))
    plan = reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
    text = "\n".join(plan.describe())
    for word in ("stop", "create the new OS disk", "attach", "rescue", "back up", "keep"):
        assert word in text
    assert tree_manifest(state, exclude=("locks",)) == before


def test_second_reimage_is_refused_while_the_first_holds_the_lock(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    gate, release = threading.Event(), threading.Event()

    def slow(step: Step) -> None:
        if step.action == "stop_vm":
            gate.set()
            release.wait(20)

    first_ctx = ctx_for(project, fault=slow)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(out=reimaging.reimage(first_ctx, "ZOOM", force=True)))
    t.start()
    assert gate.wait(20)
    try:
        with pytest.raises(ImagingError, match="ZOOM is being operated on"):
            reimaging.reimage(ctx_for(project), "ZOOM", force=True)
    finally:
        release.set()
        t.join()
    assert result["out"].ok


class Crash(BaseException):
    """Stands in for the process being killed: nothing catches it, nothing is undone."""


def fail_nth_plan_step(index: int, plan_actions: list[str], exc: type[BaseException]):
    """A fault hook that fails the plan's step ``index`` (its m-th action of that kind), once."""
    action = plan_actions[index]
    occurrence = plan_actions[: index + 1].count(action)
    calls = {"n": 0, "fired": False}

    def hook(step: Step) -> None:
        if step.action != action or calls["fired"]:
            return
        calls["n"] += 1
        if calls["n"] == occurrence:
            calls["fired"] = True
            raise exc(f"injected at {action}") if exc is Crash else InjectedFault(
                f"injected failure at {action}", host=step.host, step=action)

    return hook


PLAN_LEN = 27  # the steps of the reimage in prepared(); every one of them is failed, killed and resumed


def prepared(project: Path) -> tuple[Context, list[str], dict[str, str], object]:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    put_user_data(ctx)
    ctx.providers.lab.guest_write("HVHOST04", "NDXZOOM", r"C:\Users\operator\Desktop\todo.txt", b"todo")
    actions = [s.action for s in reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1").steps]
    assert len(actions) == PLAN_LEN, f"the plan now has {len(actions)} steps: update PLAN_LEN"
    return ctx, actions, user_data(ctx), facts.observe(ctx, ctx.inventory.instrument("ZOOM"))


@pytest.mark.parametrize("index", range(PLAN_LEN))
def test_failure_at_every_step_restores_the_previous_release(project: Path, index: int) -> None:
    ctx, actions, data_before, state_before = prepared(project)
    fctx = ctx_for(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = reimaging.reimage(fctx, "ZOOM", "2026C3.1")
    assert not out.ok and out.failed_step == actions[index]
    assert out.restored, out
    assert facts.observe(ctx, ctx.inventory.instrument("ZOOM")) == state_before
    assert user_data(ctx) == data_before
    [row] = fleet_status(ctx, ["ZOOM"])
    assert row.running == "2026C3.0" and row.power == "Running" and row.pending == ""
    assert reimaging.reimage(ctx_for(project), "ZOOM", "2026C3.1").ok


@pytest.mark.parametrize("index", range(PLAN_LEN))
def test_killed_at_every_step_then_rollback_restores(project: Path, index: int) -> None:
    ctx, actions, data_before, state_before = prepared(project)
    with pytest.raises(Crash):
        reimaging.reimage(ctx_for(project, fault=fail_nth_plan_step(index, actions, Crash)), "ZOOM", "2026C3.1")
    inst = ctx.inventory.instrument("ZOOM")
    [row] = fleet_status(ctx, ["ZOOM"])
    assert "interrupted reimage" in row.pending
    assert "invoke resume --instrument=ZOOM" in row.hint and "invoke rollback --instrument=ZOOM" in row.hint
    with pytest.raises(ImagingError, match="interrupted"):
        reimaging.reimage(ctx_for(project), "ZOOM")
    op = facts.interrupted(ctx, inst)
    out = ctx.executor().rollback_interrupted(op.id)
    assert out.restored
    assert facts.observe(ctx, inst) == state_before
    assert user_data(ctx) == data_before
    assert reimaging.reimage(ctx_for(project), "ZOOM", "2026C3.1").ok


@pytest.mark.parametrize("index", range(PLAN_LEN))
def test_killed_at_every_step_then_resume_completes(project: Path, index: int) -> None:
    ctx, actions, data_before, _ = prepared(project)
    with pytest.raises(Crash):
        reimaging.reimage(ctx_for(project, fault=fail_nth_plan_step(index, actions, Crash)), "ZOOM", "2026C3.1")
    out = reimaging.resume(ctx_for(project), "ZOOM")
    assert out.ok, out
    [row] = fleet_status(ctx, ["ZOOM"])
    assert row.running == "2026C3.1" and row.power == "Running"
    assert user_data(ctx) == data_before


def test_settings_changed_on_the_instrument_block_the_reimage_until_captured(project: Path) -> None:
    from imaging.settings.drift import DriftFound

    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    lab = ctx.providers.lab
    settings_file = r"C:\Instrument\Settings\labview\dae.ini"
    edited = lab.guest_path("HVHOST04", "NDXZOOM", settings_file).read_bytes() + b"; tuned during the cycle\n"
    lab.guest_write("HVHOST04", "NDXZOOM", settings_file, edited)
    state = project / ".state"
    before = tree_manifest(state / "lab", exclude=("locks",))
    with pytest.raises(DriftFound) as exc:
        reimaging.reimage(ctx, "ZOOM", "2026C3.1")
    assert "labview/dae.ini" in str(exc.value) and "+; tuned during the cycle" in str(exc.value)
    assert "--capture-drift" in str(exc.value)
    assert tree_manifest(state / "lab", exclude=("locks",)) == before  # refused before any change
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.1", capture_drift=True)
    assert out.ok, out.error
    saved = list((var_dir(ctx) / "settings-drift").glob("*/files/labview/dae.ini"))
    assert [p.read_bytes() for p in saved] == [edited]
    # the new Settings volume holds the rendered file again, and the next reimage goes through
    assert b"tuned during the cycle" not in lab.guest_path("HVHOST04", "NDXZOOM", settings_file).read_bytes()
    assert reimaging.reimage(ctx, "ZOOM").ok


def test_post_boot_step_runs_in_the_guest_once_and_leaves_its_marker_on_var(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    step = Step("run_guest_command", "HVHOST04", {
        "vm": "NDXZOOM", "command": [r"C:\Instrument\Apps\MySQL\bin\mysql.exe", "--execute=SELECT 1"],
        "var_path": r"E:\Imaging\instruments\NDXZOOM\NDXZOOM-var.vhdx", "marker": "imaging/migrations/m.json",
        "record": {"migration": "m"}}, "post-boot")
    assert ctx.providers.run(step)["changed"] is True
    assert ctx.providers.run(step)["changed"] is False
    assert (var_dir(ctx) / "imaging/migrations/m.json").exists()
    log = (var_dir(ctx) / "imaging/guest-commands.log").read_text()
    assert "SELECT 1" in log
    missing = Step("run_guest_command", "HVHOST04", {**step.inputs, "command": [r"C:\nope.exe"],
                                                     "marker": "imaging/migrations/n.json"}, "post-boot")
    with pytest.raises(ImagingError, match="not installed in the guest"):
        ctx.providers.run(missing)


def test_reimaging_to_the_running_release_needs_force_and_keeps_the_real_previous_release(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    c30 = [op for op in ctx.journal.operations(instrument="ZOOM") if op.to_release == "2026C3.0"][0]
    old_disks = set(c30.rollback_point["new"].values())
    with pytest.raises(InputError, match="already runs 2026C3.1") as err:
        reimaging.reimage(ctx, "ZOOM", "2026C3.1")
    assert "--force" in str(err.value)
    for _ in range(2):  # twice on purpose: the 2026C3.0 generation must survive both
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.1", force=True).ok
    zoom = ctx.inventory.instrument("ZOOM")
    for path in old_disks:
        assert (ctx.providers.lab.path(zoom.host, path) / "disk.json").exists(), path


def test_a_failed_reimage_puts_the_settings_branch_back(project: Path, tmp_path: Path) -> None:
    """Issue 16, item 8: "restored to its state before the operation" holds for git too: a reimage that
    migrated the instrument's settings branch and then failed leaves the branch where it was."""
    from settings_support import V1_TEMPLATES, fleet, git, project_repo

    from imaging.settings.render import render_settings
    from tests.ops.test_reimage_settings import branch_repo

    vm, variables = fleet()["ZOOM"]
    v1 = render_settings(repo=project_repo(tmp_path, V1_TEMPLATES, name="v1"), instrument="ZOOM", vm=vm,
                         variables=variables).files
    srepo = branch_repo(tmp_path, {vm: {"configurations/ioc/motors.xml": v1["configurations/ioc/motors.xml"],
                                        ".imaging/settings-version": b"1\n"}})
    before = git(srepo, "rev-parse", vm).strip()

    def hook(step: Step) -> None:
        if step.action == "health_check":
            raise InjectedFault("injected failure of health_check", host=step.host, step=step.action)

    ctx = ctx_for(project, fault=hook)
    ctx.inventory = ctx.inventory.model_copy(update={"settings_repo": srepo})
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.0")
    assert not out.ok and out.restored, out
    # the branch holds what it held before; its history says what happened (migrated, then restored)
    assert git(srepo, "rev-parse", f"{vm}^{{tree}}").strip() == git(srepo, "rev-parse", f"{before}^{{tree}}").strip()
    assert git(srepo, "log", "-1", "--format=%s", vm).startswith(f"Restore the settings of {vm}")
    ok = ctx_for(project)
    ok.inventory = ok.inventory.model_copy(update={"settings_repo": srepo})
    assert reimaging.reimage(ok, "ZOOM", "2026C3.0").ok  # and the migrations run again, for good
    assert git(srepo, "show", f"{vm}:.imaging/settings-version").strip() == "5"


def test_drift_of_a_running_instrument_is_read_in_its_guest_never_by_mounting_its_disk(project: Path) -> None:
    """Issue 16, defect 2: Hyper-V holds an attached disk open, so Mount-VHD of a running VM's Settings
    disk fails. The lab refuses it the same way now, and the drift check reads the settings inside the
    running guest (read only); when the VM is off it reads the disk."""
    from imaging.settings.drift import DriftFound

    seen: list[str] = []
    ctx = ctx_for(project, fault=lambda step: seen.append(step.action))
    assert reimaging.reimage(ctx, "ZOOM").ok
    zoom = ctx.inventory.instrument("ZOOM")
    lab = ctx.providers.lab
    settings_disk = facts.observe(ctx, zoom).disks[2]
    with pytest.raises(ImagingError, match="belongs to the running VM NDXZOOM"):
        lab.run(Step("read_volume", zoom.host, {"path": settings_disk, "max_bytes": 1 << 20}, "mount it"))
    settings_file = r"C:\Instrument\Settings\labview\dae.ini"
    lab.guest_write(zoom.host, zoom.vm, settings_file,
                    lab.guest_path(zoom.host, zoom.vm, settings_file).read_bytes() + b"; tuned\n")
    seen.clear()
    with pytest.raises(DriftFound, match="tuned"):
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
    assert "read_guest_files" in seen and "read_volume" not in seen
    lab.run(Step("stop_vm", zoom.host, {"vm": zoom.vm, "timeout_s": 5}, "stop"))
    seen.clear()
    with pytest.raises(DriftFound, match="tuned"):  # off: the disk is mounted read-only instead
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
    assert "read_volume" in seen and "read_guest_files" not in seen


def test_a_new_guest_gets_its_identity_from_its_answer_file_before_the_guest_steps(project: Path) -> None:
    """Issue 16, defect 3: the generalized template becomes the instrument at its first boot: computer name
    (the VM's), time zone and locale from the inventory; no secret is in the plan or the journal; setup's
    answer file is gone afterwards; a guest whose setup stopped never answers, and the reimage is undone."""
    ctx = ctx_for(project)
    out = reimaging.reimage(ctx, "ZOOM")
    assert out.ok, out
    zoom = ctx.inventory.instrument("ZOOM")
    lab = ctx.providers.lab
    stopped, identity = lab.setup_state(zoom.host, zoom.vm)
    assert stopped is None and identity == {"computer_name": "NDXZOOM", "time_zone": "GMT Standard Time",
                                            "locale": "en-GB", "domain": None, "administrator": "LabAdmin"}
    assert not lab.guest_path(zoom.host, zoom.vm, r"C:\Windows\Panther\unattend.xml").exists()
    [inject] = [d for d in ctx.journal.operation(out.op_id).plan if d["action"] == "inject_first_boot"]
    assert "<Value>@@GUEST_PASSWORD@@</Value>" in inject["inputs"]["answer"]

    def broken(step: Step) -> None:  # an answer file setup cannot read
        if step.action == "inject_first_boot":
            step.inputs["answer"] = step.inputs["answer"].replace("</unattend>", "")

    before = tree_manifest(var_dir(ctx))
    out = reimaging.reimage(ctx_for(project, fault=broken), "ZOOM", "2026C3.1")
    assert not out.ok and out.failed_step == "wait_guest" and out.restored, out
    assert "Windows setup stopped" in out.error and "answer file" in out.error
    assert facts.running_release(ctx, zoom) == "2026C3.0" and tree_manifest(var_dir(ctx)) == before


def test_settings_are_bytes_binary_crlf_and_utf16_files_deploy_and_drift_byte_for_byte(project: Path,
                                                                                      tmp_path: Path) -> None:
    """Issue 17, item 1: an instrument's branch holds a LabVIEW wiring table (binary), CRLF text and a UTF-16
    INI file: they reach the Settings volume byte for byte, and a change to the binary one on the running
    instrument is drift named by path, never a UnicodeDecodeError."""
    from imaging.settings.drift import DriftFound
    from tests.ops.test_reimage_settings import branch_repo

    wiring = bytes(range(256)) * 4 + b"\xff\xfe\x00"
    crlf = b"[Motors]\r\nAxes = 3\r\n"
    utf16 = "[Sample Environment]\r\nDevice = cryostat \u00b5\r\n".encode("utf-16")
    srepo = branch_repo(tmp_path, {"NDXZOOM": {"labview/wiring.bin": wiring, "motion/axes.ini": crlf,
                                               "labview/se.ini": utf16, ".imaging/settings-version": b"5\n"}})
    ctx = ctx_for(project)
    ctx.inventory = ctx.inventory.model_copy(update={"settings_repo": srepo})
    out = reimaging.reimage(ctx, "ZOOM")
    assert out.ok, out
    lab = ctx.providers.lab
    for rel, data in (("labview\\wiring.bin", wiring), ("motion\\axes.ini", crlf), ("labview\\se.ini", utf16)):
        assert lab.guest_path("HVHOST04", "NDXZOOM", f"C:\\Instrument\\Settings\\{rel}").read_bytes() == data
    lab.guest_write("HVHOST04", "NDXZOOM", r"C:\Instrument\Settings\labview\wiring.bin", wiring[::-1])
    with pytest.raises(DriftFound) as err:
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
    assert "labview/wiring.bin" in str(err.value)


def test_a_settings_file_larger_than_the_read_limit_is_compared_by_its_hash(project: Path, tmp_path: Path) -> None:
    """Issue 17, item 1: a calibration blob larger than what is read back from a guest (4 MB) deploys byte for
    byte; its drift is found by sha256 (running, in the guest; off, on the disk), and a capture that would
    need its content is refused, changing nothing."""
    from imaging.ops.facts import SETTINGS_INLINE_LIMIT
    from imaging.settings.drift import DriftFound
    from tests.ops.test_reimage_settings import branch_repo

    blob = bytes(range(256)) * (SETTINGS_INLINE_LIMIT // 256 + 4096)
    assert len(blob) > SETTINGS_INLINE_LIMIT
    srepo = branch_repo(tmp_path, {"NDXZOOM": {"labview/calibration.blob": blob, ".imaging/settings-version": b"5\n"}})
    ctx = ctx_for(project)
    ctx.inventory = ctx.inventory.model_copy(update={"settings_repo": srepo})
    assert reimaging.reimage(ctx, "ZOOM").ok
    lab = ctx.providers.lab
    where = r"C:\Instrument\Settings\labview\calibration.blob"
    assert lab.guest_path("HVHOST04", "NDXZOOM", where).read_bytes() == blob
    reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")  # as deployed: no drift, though never read back
    lab.guest_write("HVHOST04", "NDXZOOM", where, blob[:-1] + b"\x00")
    with pytest.raises(DriftFound) as err:
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
    assert "Large file labview/calibration.blob differs" in str(err.value)
    with pytest.raises(InputError, match="too large to be read back") as refused:
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1", dry_run=False, capture_drift=True)
    assert refused.value.field == "--capture-drift"
    ctx.providers.run(Step("stop_vm", "HVHOST04", {"vm": "NDXZOOM", "timeout_s": 60}, "stop"))
    with pytest.raises(DriftFound, match="Large file labview/calibration.blob differs"):  # read from the disk
        reimaging.plan_for_reimage(ctx, "ZOOM", "2026C3.1")
