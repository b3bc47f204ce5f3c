"""One artifact, end to end: the image a release is built into is the image its instruments run.

new-release (with its Apps build) -> publish -> stage -> deploy, through the command line on the lab, and
the same for an OS template built by `invoke build-template`: a file of the source tree is read back in
every reimaged guest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaging.core.config import Paths
from imaging.engine import runner
from imaging.images import samples
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import publish as publishing
from imaging.ops import releases as release_ops
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.providers.lab import host as lab_host
from tests.cli.test_cli import inv


def _apps_tree(root: Path, version: str) -> Path:
    files = samples.apps_tree_files("apps-new", version, 40)
    del files["version.txt"]
    files["VERSION.txt"] = f"{version}\n".encode()  # Windows names are case-insensitive: this is the version file
    files["server/bin/beamline-fix.dll"] = b"the fix for the run-number race\n"
    return samples.write_tree(files, root)


def _ok(res) -> None:  # noqa: ANN001
    assert res.returncode == 0, res.stdout + res.stderr


def test_new_release_publish_stage_deploy_puts_the_built_file_in_every_guest(project: Path, tmp_path: Path) -> None:
    src = _apps_tree(tmp_path / "apps", "2026C3.3")
    _ok(inv(project, "new-release", "--id=2026C3.3", "--from=2026C3.1", f"--apps-source={src}"))
    assert (project / "releases" / "2026C3.3.yaml").is_file()
    unstaged = inv(project, "stage", "--release=2026C3.3", "--group=B")
    assert unstaged.returncode == 1 and "invoke publish --release=2026C3.3" in unstaged.stderr
    _ok(inv(project, "publish", "--release=2026C3.3"))
    _ok(inv(project, "stage", "--release=2026C3.3", "--group=B"))
    _ok(inv(project, "deploy", "--release=2026C3.3", "--group=B", "--yes"))
    ctx = Context.load(Paths.from_env(project))
    try:
        group_b = ctx.inventory.select(group="B")
        for inst in group_b:
            apps = ctx.providers.lab.guest_path(inst.host, inst.vm, r"C:\Instrument\Apps")
            assert (apps / "server" / "bin" / "beamline-fix.dll").read_bytes() == b"the fix for the run-number race\n"
    finally:
        ctx.close()
    status = json.loads(inv(project, "status", "--json").stdout)
    assert {r["instrument"]: r["running"] for r in status if r["instrument"] in {i.name for i in group_b}} == \
        {i.name: "2026C3.3" for i in group_b}


def test_a_built_os_template_is_the_os_disk_of_the_reimaged_guest(project: Path, tmp_path: Path) -> None:
    base = samples.write_tree(samples.os_tree_files("win11-ltsc-2027.1", 60), tmp_path / "base")
    (base / "Windows" / "System32" / "facility-baseline.txt").write_text("hardened 2027\n")
    _ok(inv(project, "build-template", "--version=win11-ltsc-2027.1", f"--base={base}"))
    _ok(inv(project, "new-release", "--id=2026C4.0", "--from=2026C3.1", "--os-template=win11-ltsc-2027.1"))
    _ok(inv(project, "build-apps", "--release=2026C4.0", f"--source={_apps_tree(tmp_path / 'apps', '2026C4.0')}"))
    _ok(inv(project, "publish", "--release=2026C4.0", "--instruments=ZOOM"))
    _ok(inv(project, "reimage", "--instrument=ZOOM", "--release=2026C4.0"))
    ctx = Context.load(Paths.from_env(project))
    try:
        zoom = ctx.inventory.instrument("ZOOM")
        os_root = ctx.providers.lab.guest_root(zoom.host, zoom.vm)
        assert (os_root / "Windows" / "System32" / "facility-baseline.txt").read_text() == "hardened 2027\n"
    finally:
        ctx.close()


def test_deploying_a_group_reads_each_image_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = lab_host.read_image_files

    def counting(image: Path, dest: Path, *, workdir: Path):  # noqa: ANN202
        reads.append(str(image))
        return real(image, dest, workdir=workdir)

    monkeypatch.setattr(lab_host, "read_image_files", counting)
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (60, 40)
    try:
        insts = facts.select(ctx, group="A")
        res = deploys.deploy(ctx, insts, "2026C3.1", runner.Options(parallel=4))
        assert res.summary.names("ok") == sorted(i.name for i in insts)
        hosts = {i.host for i in insts}
        assert len(hosts) > 1 and len({(i.host, i.name) for i in insts}) > len(hosts)
        # the OS template and the Apps image are each read once: every host's staged copy, and every
        # instrument's child, is a clone of that one read (the lab's unpack cache is per sha256)
        assert len(reads) == 2 and len(set(reads)) == 2
        assert staging.not_staged(ctx, "2026C3.1", sorted(hosts)[0]) == []
        again = publishing.publish(ctx, "2026C3.1", sorted(hosts)[0])
        assert [p.copied for p in again] == [False, False]  # a complete copy on the share is left alone
    finally:
        ctx.close()


def test_an_apps_image_built_on_a_build_host_enters_the_store_and_reads_back(project: Path) -> None:
    _ok(inv(project, "new-release", "--id=2026C3.3", "--from=2026C3.1"))
    not_yet = inv(project, "publish", "--release=2026C3.3", "--instruments=ZOOM")
    assert not_yet.returncode == 1 and "not in the store" in not_yet.stderr and "build-apps" in not_yet.stderr
    ctx = Context.load(Paths.from_env(project))
    try:
        [row] = [r for r in release_ops.release_rows(ctx) if r.release.id == "2026C3.3"]
        assert row.built["apps-2026C3.3"] == "NOT BUILT" and row.deployable.startswith("no: apps-2026C3.3")
    finally:
        ctx.close()
    _apps_tree(project / ".state" / "lab" / "hosts" / "HVHOST01" / "D" / "src" / "apps", "2026C3.3")
    _ok(inv(project, "build-apps", "--release=2026C3.3", "--host=HVHOST01", "--source=D:\\src\\apps",
            "--size-gb=1"))
    _ok(inv(project, "verify-image", "--release=2026C3.3"))
    _ok(inv(project, "publish", "--release=2026C3.3", "--instruments=ZOOM"))
    _ok(inv(project, "stage", "--release=2026C3.3", "--instruments=ZOOM"))
    _ok(inv(project, "reimage", "--instrument=ZOOM", "--release=2026C3.3"))
    ctx = Context.load(Paths.from_env(project))
    try:
        [row] = [r for r in release_ops.release_rows(ctx) if r.release.id == "2026C3.3"]
        assert len(row.built["apps-2026C3.3"]) == 64 and row.deployable == "yes"
        assert row.published and "HVHOST04" in row.staged_on and row.running_on == ["ZOOM"]
        zoom = ctx.inventory.instrument("ZOOM")
        apps = ctx.providers.lab.guest_path(zoom.host, zoom.vm, r"C:\Instrument\Apps")
        assert (apps / "server" / "bin" / "beamline-fix.dll").exists()
    finally:
        ctx.close()


def test_a_missing_image_tool_stops_with_the_package_to_install(project: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from imaging.core.errors import ImagingError
    from imaging.images import tools
    from imaging.ops import reimage as reimaging

    real = tools.shutil.which

    def which(name: str, path: str | None = None) -> str | None:
        return None if name == "mkntfs" else real(name, path=path)

    monkeypatch.setattr(tools.shutil, "which", which)
    ctx = Context.load(Paths.from_env(project))
    try:
        with pytest.raises(ImagingError, match=r"mkntfs.*apt-get install ntfs-3g"):
            reimaging.reimage(ctx, "ZOOM")
        assert not list(ctx.store.list())  # nothing half-made in the store
    finally:
        ctx.close()
