"""Hotfixes on running instruments, their revert, carry-over across releases, and rollback (lab provider)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from unittest.mock import ANY

import pytest
import yaml

from imaging.core.config import Paths
from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_bytes, tree_manifest
from imaging.engine import runner
from imaging.model.hotfixes import build_manifest, open_package, write_package
from imaging.model.steps import Step
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import hotfix as hotfixing
from imaging.ops import reimage as reimaging
from imaging.ops import rollback as rollbacks
from imaging.ops.context import Context
from imaging.providers.lab.faults import InjectedFault
from tests.ops.test_reimage import put_user_data, user_data, var_dir

RELEASES = ("2025C5.0", "2026C1.0", "2026C3.0", "2026C3.1")
GROUP_A = "WISH"
NEW_FILES = {"server/bin/module00000.bin": b"patched server module\n" * 20,
             "server/lib/hotfix-added.dll": b"\x4d\x5a new file added by the hotfix"}


def ctx_for(project: Path, **kw: object) -> Context:
    ctx = Context.load(Paths.from_env(project), **kw)
    ctx.sample_sizes = (120, 80)
    return ctx


def make_pkg(tmp: Path, hid: str = "HF-001", applies: tuple[str, ...] = ("2026C3.0",), **over: object) -> Path:
    man = build_manifest(hid, "fix the run-number race", list(applies), NEW_FILES, restart=["InstrumentServer"])
    man.update(over)
    return write_package(tmp / hid, man, NEW_FILES)


def apps_dir(ctx: Context, name: str = "ZOOM") -> Path:
    inst = ctx.inventory.instrument(name)
    return ctx.providers.lab.guest_path(inst.host, inst.vm, r"C:\Instrument\Apps").resolve()


def apps_tree(ctx: Context, name: str = "ZOOM") -> dict[str, str]:
    return tree_manifest(apps_dir(ctx, name))


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_path, reason", [("../outside.dll", "'..'"), ("/etc/passwd", "absolute"),
                                              ("C:/Windows/x.dll", "absolute"), ("a/../../b", "'..'")])
def test_bad_paths_are_refused_with_the_reason(tmp_path: Path, bad_path: str, reason: str) -> None:
    folder = make_pkg(tmp_path)
    doc = yaml.safe_load((folder / "hotfix.yaml").read_text())
    doc["files"][0]["path"] = bad_path
    (folder / "hotfix.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=reason) as err:
        open_package(folder, releases=RELEASES, scratch=tmp_path / "s")
    assert err.value.field == "files[0].path"


def test_wrong_hash_unknown_release_and_escaping_link_are_refused(tmp_path: Path) -> None:
    folder = make_pkg(tmp_path)
    (folder / "files/server/bin/module00000.bin").write_bytes(b"tampered")
    with pytest.raises(InputError, match="sha256 of files/server/bin/module00000.bin") as err:
        open_package(folder, releases=RELEASES, scratch=tmp_path / "s")
    assert err.value.field == "files[0].sha256"
    with pytest.raises(InputError, match="unknown release"):
        open_package(make_pkg(tmp_path / "b", applies=("2027C1.0",)), releases=RELEASES, scratch=tmp_path / "s")
    folder = make_pkg(tmp_path / "c")
    secret = tmp_path / "secret.dll"
    secret.write_bytes(NEW_FILES["server/lib/hotfix-added.dll"])
    (folder / "files/server/lib/hotfix-added.dll").unlink()
    os.symlink(secret, folder / "files/server/lib/hotfix-added.dll")
    with pytest.raises(InputError, match="link that leads outside"):
        open_package(folder, releases=RELEASES, scratch=tmp_path / "s")


def test_archive_with_dotdot_member_is_refused_and_a_good_archive_loads(tmp_path: Path) -> None:
    folder = make_pkg(tmp_path)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(folder, arcname="HF-001")
        tar.add(folder / "hotfix.yaml", arcname="../evil.yaml")
    with pytest.raises(InputError, match="'..' path"):
        open_package(bad, releases=RELEASES, scratch=tmp_path / "s1")
    assert not (tmp_path / "evil.yaml").exists()
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(folder, arcname="HF-001")
    pkg = open_package(good, releases=RELEASES, scratch=tmp_path / "s2")
    assert pkg.hotfix.id == "HF-001" and len(pkg.hotfix.files) == 2


def test_shipped_example_package_is_valid(project: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "hotfixes" / "examples" / "HF-2026C3-001"
    pkg = open_package(example, releases=RELEASES, scratch=project / "s")
    assert pkg.hotfix.applies_to and pkg.hotfix.files


# --- apply and revert ------------------------------------------------------------------------------


def test_hotfix_then_revert_leaves_apps_byte_identical(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    put_user_data(ctx)
    data_before = user_data(ctx)
    before = apps_tree(ctx)
    res = hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path)).outcomes
    assert res["ZOOM"].ok, res
    after = apps_tree(ctx)
    for rel, data in NEW_FILES.items():
        assert after[rel] == sha256_bytes(data)
    assert after["server/bin/module00000.bin"] != before["server/bin/module00000.bin"]
    ledger = ctx.providers.lab.read_hotfix_ledger("HVHOST04", "NDXZOOM",
                                                  r"E:\Imaging\instruments\NDXZOOM\NDXZOOM-var.vhdx")
    [entries] = ledger["generations"].values()
    assert entries["HF-001"]["who"] and entries["HF-001"]["when"] and len(entries["HF-001"]["files"]) == 2
    assert hotfixing.list_hotfixes(ctx) == {"ZOOM": {"HF-001": facts.known_hotfix(ctx, "HF-001")}}
    ops = ctx.journal.operations(instrument="ZOOM", kind="hotfix")
    assert ops[-1].status == "ok"
    # the parent Apps master is untouched (writes replaced links, never wrote through them)
    masters = list((ctx.providers.lab.lab / "hosts" / "HVHOST04" / "E" / "Imaging" / "images").glob("apps-*"))
    for m in masters:
        assert (m / "content" / "server/lib/hotfix-added.dll").exists() is False
    res = hotfixing.revert(ctx, ["ZOOM"], "HF-001").outcomes
    assert res["ZOOM"].ok, res
    assert apps_tree(ctx) == before
    assert user_data(ctx) == data_before
    assert hotfixing.list_hotfixes(ctx) == {}


def test_reapplying_the_same_hotfix_is_a_noop(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    pkg = make_pkg(tmp_path)
    assert hotfixing.hotfix(ctx, ["ZOOM"], pkg).outcomes["ZOOM"].ok
    n_ops = len(ctx.journal.operations(instrument="ZOOM"))
    tree = apps_tree(ctx)
    again = hotfixing.hotfix(ctx, ["ZOOM"], pkg).outcomes["ZOOM"]
    assert again.ok and again.status == hotfixing.ALREADY
    assert len(ctx.journal.operations(instrument="ZOOM")) == n_ops and apps_tree(ctx) == tree


def test_bad_hotfix_changes_nothing(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    before, state = apps_tree(ctx), tree_manifest(project / ".state", exclude=("locks",))
    folder = make_pkg(tmp_path)
    (folder / "files/server/bin/module00000.bin").write_bytes(b"tampered")
    with pytest.raises(InputError, match="sha256"):
        hotfixing.hotfix(ctx, ["ZOOM"], folder)
    with pytest.raises(InputError, match="applies to 2026C3.1 only; ZOOM runs 2026C3.0"):
        hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path / "x", applies=("2026C3.1",)))
    assert apps_tree(ctx) == before
    now = tree_manifest(project / ".state", exclude=("locks", "hotfixes"))
    assert now == {k: v for k, v in state.items() if not k.startswith("hotfixes/")}


def test_failure_on_one_instrument_restores_its_files_and_others_proceed(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    for name in ("ZOOM", "WISH"):
        assert reimaging.reimage(ctx, name, "2026C3.0").ok
    before = apps_tree(ctx, "ZOOM")

    def fail_zoom_health(step: Step) -> None:
        if step.action == "health_check" and step.inputs["vm"] == "NDXZOOM":
            raise InjectedFault("injected health failure", host=step.host, step=step.action)

    fctx = ctx_for(project, fault=fail_zoom_health)
    res = hotfixing.hotfix(fctx, ["ZOOM", "WISH"], make_pkg(tmp_path),
                             runner.Options(parallel=2, max_fail_percent=100)).outcomes  # keep going on purpose
    assert not res["ZOOM"].ok and res["ZOOM"].restored and res["ZOOM"].failed_step == "health_check"
    assert res["WISH"].ok
    assert apps_tree(ctx, "ZOOM") == before
    assert set(hotfixing.list_hotfixes(ctx)) == {"WISH"}


def test_group_hotfix_runs_in_waves_one_failure_restores_its_files_and_is_reported(project: Path,
                                                                                   tmp_path: Path) -> None:
    ctx = ctx_for(project)
    group = facts.select(ctx, group="A")
    assert sorted(deploys.deploy(ctx, group, "2026C3.0", runner.Options(parallel=8)).summary.names("ok")) == \
        sorted(i.name for i in group)
    before = apps_tree(ctx, "MAPS")

    def fail_maps_health(step: Step) -> None:
        if step.action == "health_check" and step.inputs["vm"] == "NDXMAPS":
            raise InjectedFault("injected health failure on NDXMAPS", host=step.host, step=step.action)

    fctx = ctx_for(project, fault=fail_maps_health)
    res = hotfixing.hotfix(fctx, [i.name for i in facts.select(fctx, group="A")], make_pkg(tmp_path),
                            runner.Options(parallel=8, batches="5,100%"))
    # waves like a deploy: the canary (first of the selection) alone, then 5, then the rest
    assert [len(w) for w in res.record["waves"]] == [1, 5, 11] and res.record["waves"][0] == [group[0].name]
    assert res.summary.stopped is None and res.record["kind"] == "hotfix" and res.record["hotfix"] == "HF-001"
    # the failing instrument's files are back; every other one carries the hotfix, byte for byte
    assert not res.outcomes["MAPS"].ok and res.outcomes["MAPS"].restored
    assert apps_tree(fctx, "MAPS") == before
    carriers = hotfixing.list_hotfixes(fctx)
    assert set(carriers) == {i.name for i in group} - {"MAPS"}
    for inst in group:
        if inst.name != "MAPS":
            assert apps_tree(fctx, inst.name)["server/lib/hotfix-added.dll"] == \
                sha256_bytes(NEW_FILES["server/lib/hotfix-added.dll"])
    # the record and both reports name the failure, its step and its error
    report = json.loads(res.report_json.read_text())
    assert report == json.loads((project / ".state" / "deploys" / f"{res.id}.json").read_text())
    assert {n for n, r in report["results"].items() if r["status"] != "ok"} == {"MAPS"}
    assert report["results"]["MAPS"]["step"] == "health_check"
    assert "injected health failure on NDXMAPS" in report["results"]["MAPS"]["detail"]
    assert report["before"]["MAPS"] == [] and report["after"]["MAPS"] == [] and report["after"]["ALF"] == ["HF-001"]
    md = res.report_md.read_text()
    assert md.startswith(f"# Hotfix {res.id}") and "hotfix HF-001" in md
    maps_row = next(line for line in md.splitlines() if line.startswith("| MAPS |"))
    assert "failed" in maps_row and "health_check" in maps_row and "injected health failure" in maps_row
    # the journal holds the run's id in every operation it started; @failed selects the failures of this kind
    assert sorted(o.instrument for o in fctx.journal.operations(batch=res.id)) == sorted(i.name for i in group)
    assert [i.name for i in facts.select(fctx, instruments="@failed", kind="hotfix")] == ["MAPS"]
    assert deploys.resumable(fctx) is None  # a hotfix record is never taken for a deploy to resume
    again = hotfixing.hotfix(ctx, ["MAPS"], make_pkg(tmp_path / "again"), runner.Options())
    assert again.outcomes["MAPS"].ok and "MAPS" in hotfixing.list_hotfixes(ctx)


def test_max_fail_percent_stops_new_hotfix_starts(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    names = ["ALF", "GEM", "IRIS", "MERLIN", "POLARIS", "TOSCA"]  # all on HVHOST01
    assert len(deploys.deploy(ctx, facts.select(ctx, instruments=",".join(names)), "2026C3.0",
                            runner.Options(parallel=4)).summary.names("ok")) == 6
    trees = {n: apps_tree(ctx, n) for n in names}

    def fail_health(step: Step) -> None:
        if step.action == "health_check":
            raise InjectedFault("injected health failure", host=step.host, step=step.action)

    bad = ctx_for(project, fault=fail_health)
    res = hotfixing.hotfix(bad, names, make_pkg(tmp_path),
                            runner.Options(parallel=1, canary="", batches="4", max_fail_percent=30))
    assert res.summary.stopped and "more than --max-fail-percent=30" in res.summary.stopped
    statuses = sorted(r["status"] for r in res.record["results"].values())
    # 1 of 4 failed is 25% (go on), 2 of 4 is 50% (stop): two started, the other four never did
    assert statuses == ["failed", "failed", "not_started", "not_started", "not_started", "not_started"]
    assert len(bad.journal.operations(batch=res.id)) == 2 and len(res.outcomes) == 2
    assert res.record["status"] == "stopped" and "max-fail-percent" in res.report_md.read_text()
    assert {n: apps_tree(bad, n) for n in names} == trees and hotfixing.list_hotfixes(bad) == {}


def test_revert_runs_in_waves_with_its_own_record(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    for name in ("ZOOM", "WISH"):
        assert reimaging.reimage(ctx, name, "2026C3.0").ok
    trees = {n: apps_tree(ctx, n) for n in ("ZOOM", "WISH")}
    assert hotfixing.hotfix(ctx, ["ZOOM", "WISH"], make_pkg(tmp_path)).summary.names("ok") == ["ZOOM", "WISH"]
    with pytest.raises(InputError, match="LARMOR do not carry hotfix HF-001"):
        hotfixing.revert(ctx, ["ZOOM", "LARMOR"], "HF-001")
    res = hotfixing.revert(ctx, ["ZOOM", "WISH"], "HF-001", runner.Options(canary="WISH"))
    assert res.record["kind"] == "revert" and res.record["waves"] == [["WISH"], ["ZOOM"]]
    assert res.record["before"] == {"ZOOM": ["HF-001"], "WISH": ["HF-001"]}
    assert res.record["after"] == {"ZOOM": [], "WISH": []}
    assert {n: apps_tree(ctx, n) for n in ("ZOOM", "WISH")} == trees
    assert res.report_md.read_text().startswith(f"# Revert {res.id}")


# --- carry-over ------------------------------------------------------------------------------------


def test_release_lacking_a_hotfix_is_refused_before_any_change_then_dropped(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    assert hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path)).outcomes["ZOOM"].ok
    inst = ctx.inventory.instrument("ZOOM")
    state = facts.observe(ctx, inst)
    n_ops = len(ctx.journal.operations(instrument="ZOOM"))
    with pytest.raises(InputError, match=r"ZOOM carries hotfix HF-001.*--drop-hotfix=HF-001"):
        reimaging.reimage(ctx, "ZOOM", "2026C3.1")
    assert facts.observe(ctx, inst) == state
    assert len(ctx.journal.operations(instrument="ZOOM")) == n_ops
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.1", drop_hotfixes=("HF-001",))
    assert out.ok, out.error
    assert hotfixing.list_hotfixes(ctx) == {}
    assert "server/lib/hotfix-added.dll" not in apps_tree(ctx)


def test_hotfix_declared_for_the_new_release_is_present_after_the_reimage(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    pkg = make_pkg(tmp_path, applies=("2026C3.0", "2026C3.1"))
    assert hotfixing.hotfix(ctx, ["ZOOM"], pkg).outcomes["ZOOM"].ok
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.1")
    assert out.ok and out.error is None, out.error
    tree = apps_tree(ctx)
    assert tree["version.txt"] == sha256_bytes(b"2026C3.1\n")
    for rel, data in NEW_FILES.items():
        assert tree[rel] == sha256_bytes(data)
    assert set(hotfixing.list_hotfixes(ctx)["ZOOM"]) == {"HF-001"}
    record = facts.instrument_record(ctx, ctx.inventory.instrument("ZOOM"))
    assert record["hotfixes"] == ["HF-001"]
    # the re-application belongs to the reimage: a rollback returns past both, to the hotfixed 2026C3.0
    plan = rollbacks.plan_for_rollback(ctx, "ZOOM")
    assert plan.kind == "rollback" and plan.to_release == "2026C3.0"


def test_a_resumed_reimage_also_reapplies_the_declared_hotfix(project: Path, tmp_path: Path) -> None:

    class Killed(BaseException):
        pass

    def kill_at_health_check(step: Step) -> None:
        if step.action == "health_check":
            raise Killed()

    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    pkg = make_pkg(tmp_path, applies=("2026C3.0", "2026C3.1"))
    assert hotfixing.hotfix(ctx, ["ZOOM"], pkg).outcomes["ZOOM"].ok
    killed = ctx_for(project)
    killed.providers.lab.fault = kill_at_health_check
    with pytest.raises(Killed):
        reimaging.reimage(killed, "ZOOM", "2026C3.1")
    out = reimaging.resume(ctx_for(project), "ZOOM")
    assert out.ok and out.error is None, out.error
    tree = apps_tree(ctx)
    assert tree["version.txt"] == sha256_bytes(b"2026C3.1\n")
    for rel, data in NEW_FILES.items():
        assert tree[rel] == sha256_bytes(data)


# --- rollback --------------------------------------------------------------------------------------


def settings_tree(ctx: Context, name: str = "ZOOM") -> dict[str, str]:
    inst = ctx.inventory.instrument(name)
    return tree_manifest(ctx.providers.lab.guest_path(inst.host, inst.vm, r"C:\Instrument\Settings").resolve())


def os_tree(ctx: Context) -> dict[str, str]:
    return tree_manifest(ctx.providers.lab.guest_root("HVHOST04", "NDXZOOM"), exclude=("Instrument", "volumes",
                                                                                        "data"))


def test_reimage_then_rollback_returns_os_apps_settings_keeps_var_and_data(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    put_user_data(ctx)
    inst = ctx.inventory.instrument("ZOOM")
    disks_before = facts.observe(ctx, inst).disks
    before = (os_tree(ctx), apps_tree(ctx), settings_tree(ctx))
    data_before = user_data(ctx)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    assert apps_tree(ctx) != before[1] and user_data(ctx) == data_before
    plan = rollbacks.plan_for_rollback(ctx, "ZOOM")
    assert plan.kind == "rollback" and plan.to_release == "2026C3.0" and plan.from_release == "2026C3.1"
    assert facts.observe(ctx, inst).disks != disks_before  # the dry run changed nothing
    out = rollbacks.rollback_last(ctx, "ZOOM")
    assert out.ok, out.error
    assert facts.observe(ctx, inst).disks == disks_before
    assert (os_tree(ctx), apps_tree(ctx), settings_tree(ctx)) == before
    assert user_data(ctx) == data_before
    assert facts.running_release(ctx, inst) == "2026C3.0"
    assert user_data(ctx) == data_before


def test_rolled_away_release_is_marked_bad_and_not_chosen_by_default(project: Path) -> None:
    ctx = ctx_for(project)
    inst = ctx.inventory.instrument(GROUP_A)
    assert facts.desired_release(ctx, inst) == "2026C3.1"
    assert reimaging.reimage(ctx, GROUP_A, "2026C3.0").ok
    assert reimaging.reimage(ctx, GROUP_A).ok
    assert rollbacks.rollback_last(ctx, GROUP_A).ok
    assert facts.running_release(ctx, inst) == "2026C3.0"
    with pytest.raises(InputError, match=f"2026C3.1 is marked bad for {GROUP_A}.*--release=2026C3.1"):
        reimaging.reimage(ctx, GROUP_A)
    assert reimaging.reimage(ctx, GROUP_A, "2026C3.1").ok


def test_rollback_of_a_hotfix_reverts_it_and_rollback_with_nothing_to_return_to_is_refused(
        project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    with pytest.raises(ImagingError, match="no previous OS and Apps disks"):
        rollbacks.plan_for_rollback(ctx, "ZOOM")
    before = apps_tree(ctx)
    assert hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path)).outcomes["ZOOM"].ok
    plan = rollbacks.plan_for_rollback(ctx, "ZOOM")
    assert plan.kind == "hotfix-revert"
    assert rollbacks.rollback_last(ctx, "ZOOM").ok
    assert apps_tree(ctx) == before


def test_rollback_brings_back_the_hotfixes_of_the_previous_generation(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    assert hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path)).outcomes["ZOOM"].ok
    hotfixed = apps_tree(ctx)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1", drop_hotfixes=("HF-001",)).ok
    assert hotfixing.list_hotfixes(ctx) == {}
    assert rollbacks.rollback_last(ctx, "ZOOM").ok
    assert apps_tree(ctx) == hotfixed
    assert set(hotfixing.list_hotfixes(ctx)["ZOOM"]) == {"HF-001"}
    assert hotfixing.revert(ctx, ["ZOOM"], "HF-001").outcomes["ZOOM"].ok


# --- retention -------------------------------------------------------------------------------------


def test_retention_keeps_current_and_previous_never_counts_failed_or_what_a_rollback_needs(
        project: Path) -> None:
    ctx = ctx_for(project)
    inst = ctx.inventory.instrument("ZOOM")
    lab = ctx.providers.lab
    gens = []
    for release in ("2026C3.0", "2026C3.1", "2026C3.0"):
        assert reimaging.reimage(ctx, "ZOOM", release).ok
        gens.append(ctx.journal.last("ZOOM", kinds=("reimage",), statuses=("ok",)).rollback_point["new"])

    def exists(g: dict[str, str]) -> bool:
        return all((lab.path(inst.host, p) / "disk.json").exists() for p in g.values())

    assert not exists(gens[0]) and exists(gens[1]) and exists(gens[2])
    # a failed reimage does not count as a generation: the previous good one survives it
    def fail_health(step: Step) -> None:
        if step.action == "health_check":
            raise InjectedFault("injected health failure", host=step.host, step=step.action)

    fctx = ctx_for(project, fault=fail_health)
    assert not reimaging.reimage(fctx, "ZOOM", "2026C3.1").ok
    assert reimaging.retire_old_generations(ctx, inst) == []
    assert exists(gens[1]) and exists(gens[2])
    # after a rollback, the generation rolled back to is in use and the one rolled away from is its undo
    assert rollbacks.rollback_last(ctx, "ZOOM").ok
    assert reimaging.retire_old_generations(ctx, inst) == []
    assert exists(gens[1]) and exists(gens[2])
    assert set(facts.observe(ctx, inst).disks.values()) >= set(gens[1].values())


# --- the front door --------------------------------------------------------------------------------


def test_cli_hotfix_list_revert_and_rollback_dry_run(project: Path) -> None:
    from tests.cli.test_cli import inv

    example = Path(__file__).resolve().parents[2] / "hotfixes" / "examples" / "HF-2026C3-001"
    assert inv(project, "reimage", "--instrument=ZOOM").returncode == 0
    res = inv(project, "hotfix", f"--patch={example}", "--instruments=ZOOM", "--yes")
    assert res.returncode == 0, res.stderr
    assert "ZOOM: hotfix done" in res.stdout
    res = inv(project, "hotfixes", "--json")
    assert json.loads(res.stdout) == {"ZOOM": {"HF-2026C3-001": ANY}}
    res = inv(project, "reimage", "--instrument=ZOOM", "--release=2026C3.1")
    assert res.returncode == 1 and "--drop-hotfix=HF-2026C3-001" in res.stderr
    res = inv(project, "rollback", "--instrument=ZOOM", "--dry-run")
    assert res.returncode == 0 and "revert_hotfix" not in res.stdout and "put back the files" in res.stdout
    res = inv(project, "hotfix", "--revert=HF-2026C3-001", "--instruments=ZOOM", "--yes")
    assert res.returncode == 0, res.stderr
    assert json.loads(inv(project, "hotfixes", "--json").stdout) == {}


def test_pre_and_post_scripts_are_carried_to_the_guest_in_order(project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    folder = make_pkg(tmp_path, pre_script="scripts/pre.ps1", post_script="scripts/post.ps1")
    (folder / "scripts").mkdir()
    (folder / "scripts/pre.ps1").write_text("Stop-Service InstrumentServer\n")
    (folder / "scripts/post.ps1").write_text("Write-Output done\n")
    assert hotfixing.hotfix(ctx, ["ZOOM"], folder).outcomes["ZOOM"].ok
    runs = json.loads((var_dir(ctx) / "imaging" / "hotfix-scripts.json").read_text())["runs"]
    assert [(r["phase"], r["script"]) for r in runs] == [("pre", "scripts/pre.ps1"), ("post", "scripts/post.ps1")]
    assert runs[0]["sha256"] == sha256_bytes(b"Stop-Service InstrumentServer\n")
    missing = make_pkg(tmp_path / "m", post_script="scripts/absent.ps1")
    with pytest.raises(InputError, match="the script is not in the package"):
        open_package(missing, releases=RELEASES, scratch=tmp_path / "s")


def test_rollback_puts_the_settings_branch_back_before_the_migrations(project: Path, tmp_path: Path) -> None:
    from imaging.core import git as gitrepo
    from tests.ops.test_reimage_settings import branch_repo

    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    srepo = branch_repo(tmp_path, {"NDXZOOM": {"globals.txt": b"v4 settings\n"}})
    before = gitrepo.run_git(srepo, "rev-parse", "NDXZOOM").decode().strip()
    gitrepo.commit_files(srepo, "NDXZOOM", {"globals.txt": b"v5 settings (migrated)\n"}, "migrate", replace=True)
    # what a migrating reimage records: the branch before its migrations
    last = ctx.journal.last("ZOOM", kinds=("reimage",), statuses=("ok",))
    ctx.journal.set_rollback_point(last.id, {**last.rollback_point, "settings_before_commit": before})
    ctx.inventory = ctx.inventory.model_copy(update={"settings_repo": srepo})
    assert rollbacks.rollback_last(ctx, "ZOOM").ok
    tree = gitrepo.run_git(srepo, "show", "NDXZOOM:globals.txt")
    assert tree == b"v4 settings\n"


def test_hyperv_scripts_refuse_unsafe_hotfix_inputs_before_rendering() -> None:
    from imaging.providers.hyperv.scripts import render_script

    samples = json.loads((Path(__file__).parents[1] / "golden/powershell/_inputs.json").read_text())
    good = samples["apply_hotfix"]
    assert "Copy-Item -LiteralPath $src" in render_script("apply_hotfix", good)
    for field, bad in (("files", [{"path": "../Windows/x.dll", "sha256": "0" * 64}]),
                       ("files", [{"path": "server/x.dll", "sha256": "not-a-hash"}]),
                       ("backup_rel", "C:/elsewhere"), ("hotfix_id", "HF 1; rm"),
                       ("scripts", [{"phase": "during", "path": "a.ps1"}])):
        with pytest.raises(InputError):
            render_script("apply_hotfix", {**good, field: bad})
    with pytest.raises(InputError, match="services"):
        render_script("stop_services", {"vm": "NDXZOOM", "services": ["ok", "bad name"]})


# --- issue 16, item 4: files of a running program ------------------------------------------------------

def _services(ctx: Context, name: str = "ZOOM") -> dict:
    inst = ctx.inventory.instrument(name)
    f = ctx.providers.lab.guest_path(inst.host, inst.vm, r"C:\Windows\System32\config\lab-guest\services.json")
    return json.loads(f.read_text()) if f.exists() else {"stopped": [], "events": []}


def test_a_package_that_replaces_a_running_programs_file_without_naming_its_service_is_refused(
        project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    before = apps_tree(ctx)
    folder = make_pkg(tmp_path, restart=[])  # server/bin/module00000.bin is InstrumentServer's
    out = hotfixing.hotfix(ctx, ["ZOOM"], folder).outcomes["ZOOM"]
    assert not out.ok and out.failed_step == "apply_hotfix"
    assert "server/bin/module00000.bin (loaded by InstrumentServer)" in out.error
    assert "Name its service under 'restart'" in out.error and "nothing was changed" in out.error
    assert apps_tree(ctx) == before and not (var_dir(ctx) / "imaging" / "hotfix-backups").exists()


def test_the_named_service_is_stopped_the_files_replaced_and_it_is_started_again(
        project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    out = hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path)).outcomes["ZOOM"]
    assert out.ok, out
    op = ctx.journal.operation(out.op_id)
    plan_actions = [d["action"] for d in op.plan]
    assert plan_actions.index("stop_services") < plan_actions.index("apply_hotfix") < \
        plan_actions.index("start_services") < plan_actions.index("health_check")
    state = _services(ctx)
    assert state["stopped"] == [] and [(e["service"], e["to"]) for e in state["events"]] == [
        ("InstrumentServer", "stopped"), ("InstrumentServer", "running")]
    assert (apps_dir(ctx) / "server/bin/module00000.bin").read_bytes() == NEW_FILES["server/bin/module00000.bin"]
    # a revert stops it too, puts the old files back and starts it
    rev = hotfixing.revert(ctx, ["ZOOM"], "HF-001").outcomes["ZOOM"]
    assert rev.ok, rev
    assert [e["to"] for e in _services(ctx)["events"]][-2:] == ["stopped", "running"]


def test_a_failure_after_the_files_are_in_place_puts_them_back_and_the_service_runs(
        project: Path, tmp_path: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    before = apps_tree(ctx)

    def fail(step: Step) -> None:
        if step.action == "health_check" and step.inputs["vm"] == "NDXZOOM":
            raise InjectedFault("injected health failure", host=step.host, step=step.action)

    out = hotfixing.hotfix(ctx_for(project, fault=fail), ["ZOOM"], make_pkg(tmp_path)).outcomes["ZOOM"]
    assert not out.ok and out.restored, out
    assert apps_tree(ctx) == before  # the old files, which the running service has loaded again
    assert _services(ctx)["stopped"] == []
