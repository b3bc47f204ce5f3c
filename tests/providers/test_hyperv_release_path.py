"""The release path on Hyper-V through the real stack: publish (a file copy onto the mounted image share,
never WinRM), stage (the host pulls from the share) and reimage, every step a rendered script sent to the
loopback WS-Management endpoint."""

from __future__ import annotations

from pathlib import Path

from loopback_wsman import LoopbackWSMan
from test_hyperv_loopback import Script, action_of, loopback_inventory, make_provider

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


def test_publish_stage_and_reimage_on_hyperv_hosts(project: Path, tmp_path: Path) -> None:
    mount = tmp_path / "imagestore"  # where this machine mounts \\imagestore.controls.example.org\images
    mount.mkdir()
    paths = Paths.from_env(project)
    releases = load_releases(paths.releases)
    rel = releases["2026C3.0"]
    store = ArtifactStore(paths.store)
    records = BuildRecords(paths.builds)
    build.build_lab_template(store=store, records=records, version=rel.os_template.name,
                             base=samples.write_tree(samples.os_tree_files(rel.os_template.name, 30), tmp_path / "os"),
                             workdir=tmp_path / "w")
    build.build_apps(store=store, records=records, releases=releases, release=rel.id,
                     source=samples.write_tree(samples.apps_tree_files(rel.apps.name, rel.apps.version, 20),
                                               tmp_path / "apps"), workdir=tmp_path / "w")
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
            zoom = inv.instrument("ZOOM")
            published = publishing.publish_release(ctx, "2026C3.0", instruments=["ZOOM"])
            assert {p.artifact for p in published} == {rel.os_template.name, rel.apps.name}
            for p in published:  # a plain file copy onto the mounted share, verified
                assert p.path.parent == mount and p.path.stat().st_size == store.get(p.artifact).size
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
            assert Journal(paths.journal).operation(outcome.op_id).status == "ok"
        finally:
            ctx.close()


def test_prepare_then_switch_on_hyperv_hosts(project: Path, tmp_path: Path) -> None:
    """Issue 14 on the real stack: a prepare sends nothing that touches the VM (no stop, start, attach or
    guest call) and writes the first-boot configuration offline; the switch then makes no disk."""
    from imaging.ops import prepare as preparing
    from imaging.ops import switch as switching

    mount = tmp_path / "imagestore"
    mount.mkdir()
    paths = Paths.from_env(project)
    releases = load_releases(paths.releases)
    store, records = ArtifactStore(paths.store), BuildRecords(paths.builds)
    old, new = releases["2026C3.0"], releases["2026C3.1"]
    build.build_lab_template(store=store, records=records, version=old.os_template.name,
                             base=samples.write_tree(samples.os_tree_files(old.os_template.name, 30), tmp_path / "os"),
                             workdir=tmp_path / "w")
    for rel in (old, new):
        build.build_apps(store=store, records=records, releases=releases, release=rel.id,
                         source=samples.write_tree(samples.apps_tree_files(rel.apps.name, rel.apps.version, 20),
                                                   tmp_path / rel.id), workdir=tmp_path / "w")
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
            zoom = inv.instrument("ZOOM")
            assert reimaging.reimage(ctx, "ZOOM", old.id).ok
            ep.commands.clear()
            done = preparing.prepare(ctx, zoom, new.id)
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
        finally:
            ctx.close()
