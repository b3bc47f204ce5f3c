"""Machines imaging did not make (issue 15, in part): the survey reads a hand-made VM without changing it, and
a reimage refuses to replace its only disk, naming the survey and the way to keep the old machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaging.core.errors import ImagingError
from imaging.core.hashing import tree_manifest
from imaging.ops import reimage as reimaging
from imaging.ops import survey as surveying
from tests.cli.test_cli import inv
from tests.ops.test_failed_undo import _ctx
from tests.ops.test_reimage import fail_nth_plan_step


def _disk(ctx, name: str) -> Path:  # noqa: ANN001
    inst = ctx.inventory.instrument(name)
    return ctx.providers.lab.path(inst.host, f"D:\\Hyper-V\\{inst.vm}\\{inst.vm}.vhdx")


def test_survey_reads_a_handmade_vm_and_changes_nothing(project: Path) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    before = tree_manifest(_disk(ctx, "GEM"))
    out = surveying.survey(ctx, gem)
    assert tree_manifest(_disk(ctx, "GEM")) == before  # read only
    assert out.exists and out.generation == 1 and out.power == "Running" and not out.imaging_layout
    assert [d["parent"] for d in out.disks] == [None] and out.disks[0]["bytes"] > 1_000_000
    assert out.folders["C:\\data"] == {"kind": "data", "exists": True, "files": 2, "bytes": 980000}
    assert out.folders["C:\\LabVIEW Modules\\var"]["files"] == 1  # the old system's var folder
    assert out.folders["C:\\LabVIEW Modules\\run"] == {"kind": "shared", "exists": True, "files": 1, "bytes": 6}
    assert {u["path"] for u in out.user_files} == {"C:\\Users\\operator\\Desktop\\shift-notes.txt",
                                                   "C:\\Users\\operator\\Documents\\alignment.xlsx"}
    assert [o["path"] for o in out.other] == ["C:\\Temp\\old-installer.log"]  # nothing goes unseen
    assert "hand-made" in out.verdict
    assert json.loads(Path(out.report).read_text())["user_files"] == out.user_files


def test_survey_of_a_vm_imaging_made_and_of_no_vm(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    made = surveying.survey(ctx, ctx.inventory.instrument("ZOOM"))
    assert made.imaging_layout and "made by imaging" in made.verdict
    none = surveying.survey(ctx, ctx.inventory.instrument("ALF"))
    assert not none.exists and "nothing to adopt" in none.verdict


def test_a_reimage_refuses_to_replace_the_only_disk_of_a_handmade_vm(project: Path) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    before = tree_manifest(_disk(ctx, "GEM"))
    with pytest.raises(ImagingError) as err:
        reimaging.reimage(ctx, "GEM", "2026C3.0")
    text = str(err.value)
    assert "hand-made VM" in text and "invoke survey --instrument=GEM" in text and "NDXGEM-legacy" in text
    assert tree_manifest(_disk(ctx, "GEM")) == before and ctx.journal.operations(instrument="GEM") == []
    res = inv(project, "reimage", "--instrument=GEM", "--dry-run")
    assert res.returncode != 0 and "hand-made VM" in res.stderr and "Traceback" not in res.stderr
    res = inv(project, "survey", "--instrument=GEM")
    assert res.returncode == 0 and "shift-notes.txt" in res.stdout and "hand-made" in res.stdout


# --- adoption ------------------------------------------------------------------------------------------

from imaging.core.errors import InputError  # noqa: E402
from imaging.ops import adopt as adopting  # noqa: E402
from imaging.ops import facts  # noqa: E402
from imaging.providers.lab.faults import InjectedFault  # noqa: E402

ADOPT_LEN = 34  # the adoption of the sample hand-made VM: 9 of its own, then the new VM as a reimage makes it


def _vm(ctx, vm: str) -> dict | None:  # noqa: ANN001
    f = ctx.providers.lab.lab / "hosts" / "HVHOST01" / "vms" / f"{vm}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _files(folder: Path) -> dict[str, str]:
    return tree_manifest(folder) if folder.exists() else {}


def test_adopt_keeps_the_old_vm_whole_and_copies_everything_of_it(project: Path) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    content = _disk(ctx, "GEM") / "content"  # what the VHDX holds (disk.json is the lab's attachment record)
    old_disk = tree_manifest(content)
    out = adopting.adopt(ctx, "GEM", "2026C3.0")
    assert out.ok, out
    legacy = _vm(ctx, "NDXGEM-legacy")
    assert legacy is not None and legacy["power"] == "Off"
    assert legacy["slots"] == {"0": "D:\\Hyper-V\\NDXGEM\\NDXGEM.vhdx"}
    assert tree_manifest(content) == old_disk  # the old machine's disk, byte for byte
    assert facts.running_release(ctx, gem) == "2026C3.0" and _vm(ctx, "NDXGEM")["power"] == "Running"
    root = ctx.providers.lab.path(gem.host, "D:\\Imaging\\instruments\\NDXGEM")
    data = _files(root / "NDXGEM-data.vhdx" / "content")
    assert {k: v for k, v in data.items() if not k.startswith("adopted/")} == _files(content / "data")
    var = root / "NDXGEM-var.vhdx" / "content"
    assert _files(var / "legacy" / "LabVIEW Modules" / "var") == _files(content / "LabVIEW Modules" / "var")
    [rescued] = list((var / "rescued").iterdir())
    listing = json.loads((rescued / "rescued.json").read_text())
    assert {f["from"] for f in listing["files"]} >= {"C:\\Users\\operator\\Desktop\\shift-notes.txt",
                                                     "C:\\Temp\\old-installer.log"}
    assert (rescued / "files" / "Users" / "operator" / "Desktop" / "shift-notes.txt").read_bytes() == \
        (content / "Users" / "operator" / "Desktop" / "shift-notes.txt").read_bytes()
    with pytest.raises(InputError, match="already an imaging instrument"):
        adopting.plan_adoption(ctx, "GEM")


def test_adopt_refuses_before_stopping_anything(project: Path) -> None:
    from imaging.plans.adopt import AdoptInputs, check_fits

    ctx = _ctx(project)
    with pytest.raises(InputError, match="nothing to adopt"):
        adopting.plan_adoption(ctx, "GEM")
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    sv = surveying.survey(ctx, gem).to_dict()
    sv["folders"]["C:\\data"]["bytes"] = 600 * 1024 ** 3  # a real instrument's years of data
    with pytest.raises(InputError) as err:
        check_fits(AdoptInputs(inst=gem, host=ctx.inventory.host_of(gem), survey=sv, legacy_name="x", stamp="t"))
    assert err.value.field == "disks.data.size_gb" and err.value.file.endswith("GEM.yaml")
    assert "at least 667 GB" in err.value.fix
    assert _vm(ctx, "NDXGEM")["power"] == "Running" and _vm(ctx, "NDXGEM-legacy") is None


@pytest.mark.parametrize("index", range(ADOPT_LEN))
def test_a_fault_at_every_adoption_step_gives_back_the_old_machine_exactly(project: Path, index: int) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    old_disk, old_vm = tree_manifest(_disk(ctx, "GEM") / "content"), _vm(ctx, "NDXGEM")
    actions = [s.action for s in adopting.plan_adoption(ctx, "GEM", "2026C3.0").steps]
    assert len(actions) == ADOPT_LEN, actions
    broken = _ctx(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = adopting.adopt(broken, "GEM", "2026C3.0")
    assert not out.ok and out.restored, out
    now = _vm(ctx, "NDXGEM")
    assert now is not None and now["slots"] == old_vm["slots"] and now["power"] == "Running"  # its own name, running
    assert _vm(ctx, "NDXGEM-legacy") is None
    assert tree_manifest(_disk(ctx, "GEM") / "content") == old_disk  # byte for byte
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok  # and the adoption works once the fault is gone


def test_switch_to_legacy_and_back_twice_then_unadopt_keeps_every_byte(project: Path) -> None:
    """The issue's whole story on the lab: adopt, both sides write runs and count the shared run number, two
    round trips, then unadopt: the old machine runs under its own name with every run in its own C:\\data, and
    its disk is what it was plus those runs (and the listing of what came back)."""
    from imaging.ops import sides
    from imaging.ops.status import fleet_status

    ctx = _ctx(project)
    lab = ctx.providers.lab
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    content = _disk(ctx, "GEM") / "content"
    before = tree_manifest(content)
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok
    inst_dir = lab.path(gem.host, "D:\\Imaging\\instruments\\NDXGEM")
    data_disk = inst_dir / "NDXGEM-data.vhdx" / "content"
    new_run = "C:\\Instrument\\Shared\\LabVIEW Modules\\run\\run_number.txt"  # the new side's view of it
    first = (content / "LabVIEW Modules" / "run" / "run_number.txt").read_bytes()
    assert lab.guest_path(gem.host, gem.vm, new_run).read_bytes() == first
    runs: dict[str, bytes] = {}
    for turn in range(2):
        name = f"GEM0001235{turn}.nxs"
        runs[name] = f"run {turn} on the new side".encode()
        lab.guest_write(gem.host, gem.vm, f"C:\\data\\{name}", runs[name])
        lab.guest_write(gem.host, gem.vm, new_run, f"{12350 + turn}".encode())
        data = tree_manifest(data_disk)
        out = sides.switch_side(ctx, "GEM", "legacy")
        assert out.ok, out
        assert _vm(ctx, "NDXGEM")["power"] == "Off" and _vm(ctx, "NDXGEM-legacy")["power"] == "Running"
        link = content / "data"
        assert link.is_symlink() and tree_manifest(link.resolve()) == data  # the old side sees the shared data
        assert (content / "data.before-imaging").is_dir()  # its own copy, moved aside, kept
        # the old system finds the run number the new one counted, where it always kept it
        old_run = "C:\\LabVIEW Modules\\run\\run_number.txt"
        assert lab.guest_path(gem.host, "NDXGEM-legacy", old_run).read_bytes() == f"{12350 + turn}".encode()
        name = f"GEM0001236{turn}.nxs"
        runs[name] = f"run {turn} on the old side".encode()
        lab.guest_write(gem.host, "NDXGEM-legacy", f"C:\\data\\{name}", runs[name])
        lab.guest_write(gem.host, "NDXGEM-legacy", old_run, f"{12360 + turn}".encode())
        [row] = fleet_status(ctx, ["GEM"])
        assert row.side == "legacy" and "--to=current" in row.hint
        with pytest.raises(ImagingError, match="legacy side"):
            reimaging.reimage(ctx, "GEM", "2026C3.1")
        data = tree_manifest(data_disk)
        out = sides.switch_side(ctx, "GEM", "current")
        assert out.ok, out
        assert _vm(ctx, "NDXGEM")["power"] == "Running" and _vm(ctx, "NDXGEM-legacy")["power"] == "Off"
        assert tree_manifest(data_disk) == data
        assert lab.guest_path(gem.host, gem.vm, new_run).read_bytes() == f"{12360 + turn}".encode()
    [row] = fleet_status(ctx, ["GEM"])
    assert row.side == "current" and row.running == "2026C3.0"
    after = tree_manifest(content)  # the legacy disk: only the recorded change (folders moved aside, links)
    moved = {"data", "volumes/Data", "volumes/Shared", "LabVIEW Modules/run"}
    assert all(after[k].startswith("link:") for k in moved)
    assert {k.replace(".before-imaging/", "/"): v for k, v in after.items() if k not in moved} == before
    with pytest.raises(InputError, match="already runs its current side"):
        sides.plan_for_side(ctx, gem, "current")
    final = tree_manifest(data_disk)

    out = adopting.unadopt(ctx, "GEM")
    assert out.ok, out
    old = _vm(ctx, "NDXGEM")
    assert _vm(ctx, "NDXGEM-legacy") is None and old["slots"] == {"0": "D:\\Hyper-V\\NDXGEM\\NDXGEM.vhdx"}
    assert old["power"] == "Running" and sides.side_of(ctx, gem) is None
    now = tree_manifest(content)
    [kept] = {k.split("/")[2] for k in now if k.startswith("ProgramData/imaging/unadopted-")}
    ours = {k for k in now if k.startswith(f"ProgramData/imaging/{kept}/")}
    assert {k.split("/", 3)[3] for k in ours} == {"data.json", "shared.json",
                                                   "replaced/LabVIEW Modules/run/run_number.txt"}
    assert (content / "ProgramData" / "imaging" / kept / "replaced" / "LabVIEW Modules" / "run" /
            "run_number.txt").read_bytes() == first  # the number it replaced is kept, not lost
    changed = {k: v for k, v in now.items() if k not in ours and before.get(k) != v}
    assert set(changed) == {f"data/{n}" for n in runs} | {"LabVIEW Modules/run/run_number.txt"}, changed
    for name, body in runs.items():  # every run of both sides, in the old machine's own folder
        assert (content / "data" / name).read_bytes() == body
    assert (content / "LabVIEW Modules" / "run" / "run_number.txt").read_bytes() == b"12361"
    assert {k for k in before if k not in now} == set()  # nothing of the old machine went
    assert tree_manifest(data_disk) == final  # the Data disk is kept, untouched, on the host
    assert surveying.survey(ctx, gem).imaging_layout is False  # a hand-made VM again: adopt works again
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok
    assert lab.guest_path(gem.host, gem.vm, "C:\\data\\GEM00012361.nxs").read_bytes() == runs["GEM00012361.nxs"]


UNADOPT_LEN = 18  # GEM back from its current side: 6 disks off the new VM, 2 folders back, 2 copies back


@pytest.mark.parametrize("index", range(UNADOPT_LEN))
def test_a_fault_at_every_unadoption_step_returns_to_the_side_that_ran(project: Path, index: int) -> None:
    from imaging.ops import sides

    ctx = _ctx(project)
    lab = ctx.providers.lab
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok
    assert sides.switch_side(ctx, "GEM", "legacy").ok
    lab.guest_write(gem.host, "NDXGEM-legacy", "C:\\data\\GEM00012360.nxs", b"a run on the old side")
    assert sides.switch_side(ctx, "GEM", "current").ok
    lab.guest_write(gem.host, gem.vm, "C:\\data\\GEM00012361.nxs", b"a run on the new side")
    content = _disk(ctx, "GEM") / "content"
    data_disk = lab.path(gem.host, "D:\\Imaging\\instruments\\NDXGEM\\NDXGEM-data.vhdx") / "content"

    def files(m: dict[str, str]) -> dict[str, str]:  # the disk's files; links are the switch's to remake
        return {k: v for k, v in m.items() if not v.startswith("link:")}

    before, data = files(tree_manifest(content)), tree_manifest(data_disk)
    vms = {vm: _vm(ctx, vm) for vm in ("NDXGEM", "NDXGEM-legacy")}
    actions = [s.action for s in adopting.plan_for_unadoption(ctx, "GEM").steps]
    assert len(actions) == UNADOPT_LEN, actions
    broken = _ctx(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = adopting.unadopt(broken, "GEM")
    assert not out.ok and out.restored, out
    assert files(tree_manifest(content)) == before and tree_manifest(data_disk) == data
    for vm, was in vms.items():
        assert {k: _vm(ctx, vm)[k] for k in ("slots", "power")} == {k: was[k] for k in ("slots", "power")}, vm
    assert sides.side_of(ctx, gem) == "current" and facts.running_release(ctx, gem) == "2026C3.0"
    assert adopting.unadopt(ctx, "GEM").ok  # and it works once the fault is gone
    assert (content / "data" / "GEM00012361.nxs").read_bytes() == b"a run on the new side"


@pytest.mark.parametrize("index", range(12))
def test_a_fault_in_a_switch_to_legacy_returns_to_the_side_that_ran(project: Path, index: int) -> None:
    from imaging.ops import sides

    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok
    content = _disk(ctx, "GEM") / "content"
    before, vms = tree_manifest(content), (_vm(ctx, "NDXGEM"), _vm(ctx, "NDXGEM-legacy"))
    actions = [s.action for s in sides.plan_for_side(ctx, gem, "legacy").steps]
    assert len(actions) == 12, actions
    broken = _ctx(project, fault=fail_nth_plan_step(index, actions, InjectedFault))
    out = sides.switch_side(broken, "GEM", "legacy")
    assert not out.ok and out.restored, out
    assert tree_manifest(content) == before
    for was, vm in zip(vms, ("NDXGEM", "NDXGEM-legacy"), strict=True):
        assert {k: v for k, v in _vm(ctx, vm).items() if k != "power_history"} == \
            {k: v for k, v in was.items() if k != "power_history"}
    assert sides.side_of(ctx, gem) == "current"


@pytest.mark.parametrize("way", ["resume", "rollback"])
def test_adoption_killed_during_the_copy_ends_in_one_of_the_two_clean_states(project: Path, way: str) -> None:
    """kill -9 of a real `invoke adopt` in the middle of copying the data off the old disk, then the command
    `invoke status` names: adopted completely, or the old machine back exactly."""
    from tests.ops.test_prepare_switch import _inv_env

    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    content = _disk(ctx, "GEM") / "content"
    before, vm_before = tree_manifest(content), _vm(ctx, "NDXGEM")
    killed = _inv_env(project, {"IMAGING_LAB_FAULTS": "*:copy_from_disk#1@kill-during"}, "adopt", "--instrument=GEM",
                      "--release=2026C3.0", "--yes")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    status = inv(project, "status", "--instruments=GEM")
    assert f"invoke {way} --instrument=GEM" in status.stdout, status.stdout
    out = inv(project, way, "--instrument=GEM")
    assert out.returncode == 0, out.stdout + out.stderr
    ctx = _ctx(project)
    assert tree_manifest(content) == before  # the old machine's disk, byte for byte, either way
    if way == "resume":
        assert facts.running_release(ctx, gem) == "2026C3.0" and _vm(ctx, "NDXGEM-legacy")["power"] == "Off"
        data = ctx.providers.lab.path(gem.host, "D:\\Imaging\\instruments\\NDXGEM\\NDXGEM-data.vhdx") / "content"
        assert {k: v for k, v in tree_manifest(data).items() if not k.startswith("adopted/")} == \
            tree_manifest(content / "data")
    else:
        now = _vm(ctx, "NDXGEM")
        assert now["slots"] == vm_before["slots"] and now["power"] == "Running"
        assert _vm(ctx, "NDXGEM-legacy") is None


def test_retire_legacy_only_after_the_current_side_ran_long_enough_and_never_the_shared_disks(project: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from imaging.ops import sides
    from imaging.ops.status import fleet_status

    fleet = project / "instruments" / "fleet" / "GEM.yaml"
    fleet.write_text(fleet.read_text() + "adopt:\n  retire_after: 2026-01-31\n")
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    assert adopting.adopt(ctx, "GEM", "2026C3.0").ok
    [row] = fleet_status(ctx, ["GEM"])
    assert "due for retirement (retire_after 2026-01-31)" in row.pending and "retire-legacy" in row.hint
    with pytest.raises(InputError, match="needs 14 without a switch back"):
        sides.plan_for_retirement(ctx, gem)
    assert sides.switch_side(ctx, "GEM", "legacy").ok
    later = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(InputError, match="runs its legacy side"):
        sides.plan_for_retirement(ctx, gem, now=later)
    assert sides.switch_side(ctx, "GEM", "current").ok
    shared = ctx.providers.lab.path(gem.host, "D:\\Imaging\\instruments\\NDXGEM")
    kept = {p.name: tree_manifest(p) for p in shared.iterdir()}
    out = sides.retire_legacy(ctx, "GEM", now=later)
    assert out.ok, out
    assert _vm(ctx, "NDXGEM-legacy") is None and not (_disk(ctx, "GEM") / "disk.json").exists()
    assert {p.name: tree_manifest(p) for p in shared.iterdir()} == kept  # Var, Data and the new disks untouched
    assert sides.side_of(ctx, gem) is None and _vm(ctx, "NDXGEM")["power"] == "Running"
    [row] = fleet_status(ctx, ["GEM"])
    assert "retire" not in row.pending
    with pytest.raises(InputError, match="no legacy side"):
        sides.plan_for_retirement(ctx, gem, now=later)


def test_the_commands_a_support_person_types(project: Path) -> None:
    """adopt, status with its side column, a switch to the old side and back, and unadopt, as typed."""
    assert inv(project, "lab-handmade", "--instruments=GEM").returncode == 0
    res = inv(project, "status", "--instruments=GEM")
    assert "hand-made VM: adopt it" in res.stdout and "invoke adopt --instrument=GEM" in res.stdout
    assert inv(project, "adopt", "--instrument=GEM", "--yes").returncode == 0
    res = inv(project, "status", "--instruments=GEM")
    assert "side" in res.stdout and "current" in res.stdout, res.stdout
    res = inv(project, "switch", "--instruments=GEM", "--to=legacy", "--yes")
    assert res.returncode == 0 and "now runs its legacy side (NDXGEM-legacy)" in res.stdout, res.stdout + res.stderr
    assert "legacy (NDXGEM-legacy)" in inv(project, "status", "--instruments=GEM").stdout
    res = inv(project, "unadopt", "--instrument=GEM", "--dry-run")
    assert res.returncode == 0 and "give GEM back to its hand-made VM NDXGEM-legacy" in res.stdout
    assert "nothing was changed" in res.stdout
    res = inv(project, "unadopt", "--instrument=GEM", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "NDXGEM-legacy runs again as NDXGEM" in res.stdout and "copied back" in res.stdout
    assert "hand-made VM: adopt it" in inv(project, "status", "--instruments=GEM").stdout
    res = inv(project, "unadopt", "--instrument=GEM", "--yes")
    assert res.returncode != 0 and "no legacy side" in res.stderr and "Traceback" not in res.stderr
