"""The release path on Hyper-V through the real stack: publish (a file copy onto the mounted image share,
never WinRM), stage (the host pulls from the share) and reimage, every step a rendered script sent to the
loopback WS-Management endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loopback_wsman import LoopbackWSMan, Reply
from test_hyperv_loopback import Script, action_of, framed, loopback_inventory, make_provider

from imaging.core.config import Paths
from imaging.images import build, samples
from imaging.model.labels import load_labels
from imaging.model.releases import load_releases
from imaging.ops import publish as publishing
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.providers.dispatcher import Dispatcher
from imaging.state.builds import BuildRecords
from imaging.state.journal import Journal
from imaging.state.store import ArtifactStore


@contextmanager
def hyperv_lab(project: Path, tmp_path: Path, release_ids: tuple[str, ...]) -> Iterator[tuple[Context, Any, Path]]:
    """The project's releases built into the store, a mounted image share, and a Context whose hosts are the
    example Hyper-V inventory pointed at the loopback endpoint: (ctx, endpoint, share mount)."""
    mount = tmp_path / "imagestore"
    mount.mkdir()
    paths = Paths.from_env(project)
    releases = load_releases(paths.releases)
    store, records = ArtifactStore(paths.store), BuildRecords(paths.builds)
    first = releases[release_ids[0]]
    base = samples.write_tree(samples.os_tree_files(first.os_template.name, 30), tmp_path / "os")
    build.build_lab_template(store=store, records=records, version=first.os_template.name, base=base,
                             workdir=tmp_path / "w")
    for rid in release_ids:
        rel = releases[rid]
        build.build_apps(store=store, records=records, releases=releases, release=rid,
                         source=samples.write_tree(samples.apps_tree_files(rel.apps.name, rel.apps.version, 20),
                                                   tmp_path / f"apps-{rid}"), workdir=tmp_path / "w")
    script = Script()
    with LoopbackWSMan(script) as ep:
        inv = loopback_inventory(ep.port)
        inv = inv.model_copy(update={"hosts": {n: h.model_copy(update={"share_mount": str(mount)})
                                               for n, h in inv.hosts.items()}})
        provider = make_provider(inv)
        provider.shares = {h.name: (h.share, h.share_mount) for h in inv.hosts.values()}
        ctx = Context(paths=paths, inventory=inv, releases=releases, labels=load_labels(paths.releases),
                      store=store, providers=Dispatcher(inv, paths.lab, providers={"hyperv": provider}))
        try:
            yield ctx, ep, mount
        finally:
            ctx.close()


def test_publish_stage_and_reimage_on_hyperv_hosts(project: Path, tmp_path: Path) -> None:
    with hyperv_lab(project, tmp_path, ("2026C3.0",)) as (ctx, ep, mount):
        rel = ctx.releases["2026C3.0"]
        zoom = ctx.inventory.instrument("ZOOM")
        published = publishing.publish_release(ctx, "2026C3.0", instruments=["ZOOM"])
        assert {p.artifact for p in published} == {rel.os_template.name, rel.apps.name}
        for p in published:  # a plain file copy onto the mounted share, verified
            assert p.path.parent == mount and p.path.stat().st_size == ctx.store.get(p.artifact).size
        assert not ep.commands  # publishing sent nothing over WinRM
        staging.stage_for(ctx, "2026C3.0", [zoom])
        staged = [c for c in ep.commands if action_of(c.script) == "stage_artifact"]
        assert len(staged) == 2 and all("imagestore.controls.example.org" in c.script for c in staged)
        outcome = reimaging.reimage(ctx, "ZOOM", "2026C3.0")
        assert outcome.ok, outcome.error
        actions = [action_of(c.script) for c in ep.commands]
        assert actions.count("stage_artifact") == 4  # the reimage checks the staged images again
        for needed in ("acquire_lock", "stop_vm", "create_child_disk", "attach_disk", "start_vm",
                       "configure_guest", "health_check", "write_record", "release_lock"):
            assert needed in actions
        assert Journal(ctx.paths.journal).operation(outcome.op_id).status == "ok"


def test_prepare_then_switch_on_hyperv_hosts(project: Path, tmp_path: Path) -> None:
    """Issue 14 on the real stack: a prepare sends nothing that touches the VM (no stop, start, attach or
    guest call) and writes the first-boot configuration offline; the switch then makes no disk."""
    from imaging.ops import prepare as preparing
    from imaging.ops import switch as switching

    with hyperv_lab(project, tmp_path, ("2026C3.0", "2026C3.1")) as (ctx, ep, _):
        zoom = ctx.inventory.instrument("ZOOM")
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
        ep.commands.clear()
        done = preparing.prepare(ctx, zoom, "2026C3.1")
        assert done.outcome is not None and done.outcome.ok, done
        prepared = [action_of(c.script) for c in ep.commands]
        assert {"create_child_disk", "create_disk", "write_settings", "inject_first_boot"} <= set(prepared)
        touching = {"stop_vm", "start_vm", "attach_disk", "detach_disk", "configure_guest", "health_check",
                    "write_record", "wait_guest", "backup_volume"}
        assert not touching & set(prepared), prepared  # the running VM was never touched
        ep.commands.clear()
        out = switching.switch(ctx, zoom)
        assert out.ok, out.error
        switched = [action_of(c.script) for c in ep.commands]
        assert not {"create_child_disk", "write_settings", "inject_first_boot"} & set(switched)
        for needed in ("stop_vm", "attach_disk", "start_vm", "configure_guest", "health_check", "write_record"):
            assert needed in switched, switched


def test_survey_adopt_and_the_two_sides_on_hyperv_hosts(project: Path, tmp_path: Path) -> None:
    """Issue 15 on the real stack: the survey's answer (a hand-made generation-1 VM) drives the adoption's
    scripts; every step goes out as its rendered script, with the old machine's disk and names in it."""
    from imaging.ops import adopt as adopting
    from imaging.ops import sides

    handmade = {"ok": True, "changed": False, "exists": True, "generation": 1, "power": "Running",
                "disks": [{"slot": 0, "controller": "IDE 0", "path": "D:\\Hyper-V\\NDXGEM\\NDXGEM.vhdx",
                           "parent": None, "bytes": 40 * 1024 ** 3, "label": None}],
                "folders": {"C:\\data": {"kind": "data", "exists": True, "files": 2, "bytes": 2_000_000},
                            "C:\\LabVIEW Modules\\var": {"kind": "var", "exists": True, "files": 3, "bytes": 300},
                            "C:\\LabVIEW Modules\\run": {"kind": "shared", "exists": True, "files": 1, "bytes": 6}},
                "user_files": [{"path": "C:\\Users\\operator\\Desktop\\notes.txt", "bytes": 20}],
                "other": []}
    with hyperv_lab(project, tmp_path, ("2026C3.0",)) as (ctx, ep, _):
        ep.respond.fail_once("survey_vm", Reply(output=framed({**handmade, "action": "survey_vm"})))
        ep.respond.fail_once("survey_vm", Reply(output=framed({**handmade, "action": "survey_vm"})))
        out = adopting.adopt(ctx, "GEM", "2026C3.0")
        assert out.ok, out.error
        sent = [(action_of(c.script), c.script) for c in ep.commands]
        actions = [a for a, _ in sent]
        for needed in ("survey_vm", "stop_vm", "rename_vm", "copy_from_disk", "ensure_vm", "create_child_disk",
                       "inject_first_boot", "attach_disk", "start_vm", "health_check", "write_record"):
            assert needed in actions, actions
        assert actions.index("rename_vm") < actions.index("copy_from_disk") < actions.index("ensure_vm")
        [rename] = [s for a, s in sent if a == "rename_vm"]
        assert "$NewName = 'NDXGEM-legacy'" in rename
        copies = [s for a, s in sent if a == "copy_from_disk"]
        assert len(copies) == 3 and all("$SourcePath = 'D:\\Hyper-V\\NDXGEM\\NDXGEM.vhdx'" in s for s in copies)
        assert any("notes.txt" in s for s in copies)  # the user's file is rescued
        ep.commands.clear()
        for vm, power in (("NDXGEM", "Running"), ("NDXGEM-legacy", "Off")):  # what get_state answers there
            ep.respond.fail_once("get_state", Reply(output=framed({"ok": True, "changed": False, "exists": True,
                                                                   "power": power, "disks": []})), f"'{vm}'")
        assert sides.switch_side(ctx, "GEM", "legacy").ok
        moved = [action_of(c.script) for c in ep.commands]
        assert moved.index("detach_disk") < moved.index("move_aside") < moved.index("attach_disk") < \
            moved.index("start_vm")
        assert sides.side_of(ctx, ctx.inventory.instrument("GEM")) == "legacy"
        [link] = [c.script for c in ep.commands if action_of(c.script) == "configure_guest"]
        assert "'sub'" in link and "LabVIEW Modules\\run" in link  # the run number, on the Shared volume

        # back to the current side, then give the instrument back to its hand-made VM
        for vm, power in (("NDXGEM", "Off"), ("NDXGEM-legacy", "Running")):
            ep.respond.fail_once("get_state", Reply(output=framed({"ok": True, "changed": False, "exists": True,
                                                                   "power": power, "disks": []})), f"'{vm}'")
        assert sides.switch_side(ctx, "GEM", "current").ok
        ep.commands.clear()
        inst_dir = "D:\\Imaging\\instruments\\NDXGEM\\NDXGEM"
        new_disks = [{"slot": 3, "path": f"{inst_dir}-var.vhdx"}, {"slot": 4, "path": f"{inst_dir}-data.vhdx"},
                     {"slot": 5, "path": f"{inst_dir}-shared.vhdx"}]
        for vm, power, disks in (("NDXGEM", "Running", new_disks), ("NDXGEM-legacy", "Off", [])):
            for _ in range(2):  # the dry run, then the run
                ep.respond.fail_once("get_state", Reply(output=framed({"ok": True, "changed": False, "exists": True,
                                                                       "power": power, "disks": disks})), f"'{vm}'")
        adopting.plan_for_unadoption(ctx, "GEM")
        out = adopting.unadopt(ctx, "GEM")
        assert out.ok, out.error
        sent = [(action_of(c.script), c.script) for c in ep.commands if action_of(c.script) != "get_state"]
        order = [a for a, _ in sent]
        assert order.index("remove_vm") < order.index("move_aside") < order.index("remove_disk_links") < \
            order.index("copy_from_disk") < order.index("rename_vm") < order.index("start_vm"), order
        copy_data = next(s for a, s in sent if a == "copy_from_disk")
        assert f"$SourcePath = '{inst_dir}-data.vhdx'" in copy_data
        assert "$DestPath = 'D:\\Hyper-V\\NDXGEM\\NDXGEM.vhdx'" in copy_data and "replaced_to" in copy_data
        [back] = [s for a, s in sent if a == "rename_vm"]
        assert "$Vm = 'NDXGEM-legacy'" in back and "$NewName = 'NDXGEM'" in back
        assert sides.side_of(ctx, ctx.inventory.instrument("GEM")) is None


def test_doctor_on_hyperv_hosts_reports_what_the_host_script_found(project: Path, tmp_path: Path) -> None:
    """invoke doctor through the real transport: the host script's checks (shaped as doctor_host.ps1 writes
    them) become the table's rows with their fixes; a host that cannot be reached is one failed check."""
    import hyperv_frames as frames

    from imaging.ops import doctor as doctoring

    checks = [{"name": "endpoint", "ok": True, "detail": "PowerShell 5.1 on HVHOST01 answered as CONTROLS\\svc"},
              {"name": "image share", "ok": False, "detail": "\\\\imagestore\\images is not reachable from HVHOST01",
               "fix": "auth: credssp for the host, or resource-based Kerberos constrained delegation"}]
    with hyperv_lab(project, tmp_path, ("2026C3.0",)) as (ctx, ep, _):
        ep.respond.fail_once("doctor_host", Reply(output=framed({"ok": True, "changed": False, "action": "doctor_host",
                                                                 "checks": checks, "vms": {"NDXALF": "Absent"}})))
        ep.respond.fail_once("doctor_host", Reply(output=framed(frames.failure(
            "doctor_host", "Access is denied.", error_id="AccessDenied", category="PermissionDenied"))))
        out = doctoring.doctor(ctx, ["HVHOST01", "HVHOST02"])
        sent = [c.script for c in ep.commands if action_of(c.script) == "doctor_host"]
        assert len(sent) == 2 and "$StorageRoot = 'D:\\Imaging'" in sent[0]
    by = {(c.host, c.name): c for c in out}
    assert by[("HVHOST01", "image share")].ok is False and "credssp" in by[("HVHOST01", "image share")].fix
    assert by[("HVHOST01", "endpoint")].ok and "TLS trust" in by[("HVHOST01", "endpoint")].detail
    assert by[("HVHOST02", "connection")].ok is False and "Access is denied" in by[("HVHOST02", "connection")].detail
    assert "credentials" in by[("HVHOST02", "connection")].fix
