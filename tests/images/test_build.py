"""Building release images: the Apps disk into the store with a record, verification, empty disks, OS
templates (lab tar; hyperv answer file and provisioning script), and the build-host steps on the lab."""

from __future__ import annotations

import filecmp
import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

from imaging.core.errors import ArtifactError, InputError
from imaging.images import build, vhdx
from imaging.images.answer_files import TemplateSettings, render_provision, render_unattend
from imaging.images.manifest import ImageManifest
from imaging.model.releases import load_releases
from imaging.state.builds import BuildRecords
from imaging.state.store import ArtifactStore
from tests.cli.test_cli import inv

ROOT = Path(__file__).resolve().parents[2]
RELEASES = load_releases(ROOT / "releases")
GOLDEN = Path(__file__).parents[1] / "golden" / "unattend"
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def apps_tree(root: Path, version: str = "2026C3.0") -> Path:
    (root / "server" / "bin").mkdir(parents=True)
    (root / "client" / "plugins").mkdir(parents=True)
    (root / "python" / "Lib" / "site-packages").mkdir(parents=True)
    (root / "server" / "db").mkdir()
    (root / "version.txt").write_text(f"{version}\n")
    (root / "server" / "bin" / "server.exe").write_bytes(os.urandom(300_000))
    (root / "client" / "plugins" / "panel – µSR.dll").write_bytes(os.urandom(5000))
    (root / "python" / "python.exe").write_bytes(b"MZ" + bytes(range(256)) * 50)
    (root / "python" / "Lib" / "site-packages" / "empty.pth").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("apps")
    tree = apps_tree(base / "tree")
    store, records = ArtifactStore(base / "store"), BuildRecords(base / "builds")
    result = build.build_apps(store=store, records=records, releases=RELEASES, release="2026C3.0", source=tree,
                              workdir=base / "work")
    return tree, store, records, result, base


def test_apps_image_is_a_vhdx_with_one_ntfs_partition_labelled_apps_holding_the_tree(built) -> None:
    tree, store, _, result, base = built
    image = store.path_of("apps-2026C3.0", verify=True)
    assert vhdx.qemu_info(image)["format"] == "vhdx"
    back = vhdx.read_image_files(image, base / "back", workdir=base / "work")
    assert back.label == "Apps" and back.partition_name == "Apps"
    cmp = filecmp.dircmp(tree, base / "back")
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not c.left_only and not c.right_only, (c.left_only, c.right_only)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors
        stack.extend(c.subdirs.values())
    assert len(result.manifest.files) == 5


def test_build_record_says_ok_with_inputs_manifest_and_tools(built) -> None:
    _, store, records, result, _ = built
    rec = records.get("apps", "apps-2026C3.0")
    assert rec.status == "ok" and rec.release == "2026C3.0" and rec.sha256 == store.get("apps-2026C3.0").sha256
    assert rec.who and rec.started and rec.ended and "qemu-img" in json.dumps(rec.tools)
    assert ImageManifest.from_dict(rec.manifest).content_key() == result.manifest.content_key()


def test_verify_passes_then_one_changed_byte_fails_naming_the_problem(built, tmp_path: Path) -> None:
    _, store, records, _, _ = built
    assert build.verify_stored(store=store, records=records, name="apps-2026C3.0", workdir=tmp_path) == []
    copy = tmp_path / "store"
    import shutil

    shutil.copytree(store.root, copy)
    blob = ArtifactStore(copy).path_of("apps-2026C3.0")
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(blob, "r+b") as fh:
        fh.seek(blob.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    problems = build.verify_stored(store=ArtifactStore(copy), records=records, name="apps-2026C3.0",
                                   workdir=tmp_path)
    assert any("image sha256 mismatch" in p for p in problems)


def test_the_same_tree_built_twice_gives_the_same_manifest(built, tmp_path: Path) -> None:
    tree, _, _, first, _ = built
    again = build.build_apps(store=ArtifactStore(tmp_path / "s"), records=BuildRecords(tmp_path / "b"),
                             releases=RELEASES, release="2026C3.0", source=tree, workdir=tmp_path / "w")
    assert again.manifest.content_key() == first.manifest.content_key()
    assert [f.sha256 for f in again.manifest.files] == [f.sha256 for f in first.manifest.files]


def test_a_stored_image_is_never_rebuilt(built, tmp_path: Path) -> None:
    tree, store, records, _, _ = built
    with pytest.raises(ArtifactError, match="immutable"):
        build.build_apps(store=store, records=records, releases=RELEASES, release="2026C3.0", source=tree,
                         workdir=tmp_path)


def test_a_failed_build_is_recorded_and_stores_nothing(tmp_path: Path) -> None:
    tree = apps_tree(tmp_path / "tree")
    store, records = ArtifactStore(tmp_path / "store"), BuildRecords(tmp_path / "builds")
    with pytest.raises(InputError, match="too small"):
        build.build_apps(store=store, records=records, releases=RELEASES, release="2026C3.0", source=tree,
                         workdir=tmp_path / "w", size_bytes=3 * 1024 * 1024)
    rec = records.get("apps", "apps-2026C3.0")
    assert rec.status == "failed" and "too small" in rec.error
    assert not store.exists("apps-2026C3.0")


def test_source_must_carry_the_release_version(tmp_path: Path) -> None:
    tree = apps_tree(tmp_path / "tree", version="2026C1.0")
    with pytest.raises(InputError, match="version file does not match"):
        build.build_apps(store=ArtifactStore(tmp_path / "s"), records=BuildRecords(tmp_path / "b"),
                         releases=RELEASES, release="2026C3.0", source=tree, workdir=tmp_path)
    assert BuildRecords(tmp_path / "b").get("apps", "apps-2026C3.0") is None


def test_empty_settings_var_and_data_disks_are_labelled(tmp_path: Path) -> None:
    made = build.create_instrument_disks(tmp_path / "disks", vm="NDXZOOM",
                                         sizes_gb={"settings": 1, "var": 2, "data": 4}, workdir=tmp_path / "w")
    assert {r: m.label for r, m in made.items()} == {"settings": "Settings", "var": "Var", "data": "Data"}
    back = vhdx.read_image_files(tmp_path / "disks" / "NDXZOOM-var.vhdx", tmp_path / "back", workdir=tmp_path)
    assert back.label == "Var" and not list((tmp_path / "back").iterdir())
    with pytest.raises(InputError, match="already exists"):
        build.create_instrument_disks(tmp_path / "disks", vm="NDXZOOM",
                                      sizes_gb={"settings": 1, "var": 2, "data": 4}, workdir=tmp_path / "w")


def test_cli_build_apps_then_verify_then_damage(project: Path, tmp_path: Path) -> None:
    tree = apps_tree(tmp_path / "tree")
    res = inv(project, "build-apps", "--release=2026C3.0", f"--source={tree}", "--dry-run")
    assert res.returncode == 0 and "would build apps-2026C3.0" in res.stdout
    assert not (project / ".state" / "store" / "manifests").exists()
    res = inv(project, "build-apps", "--release=2026C3.0", f"--source={tree}")
    assert res.returncode == 0, res.stderr
    res = inv(project, "verify-image", "--release=2026C3.0")
    assert res.returncode == 0 and "matches its manifest" in res.stdout
    blob = ArtifactStore(project / ".state" / "store").path_of("apps-2026C3.0")
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(blob, "r+b") as fh:
        fh.seek(4096)
        b = fh.read(1)
        fh.seek(4096)
        fh.write(bytes([b[0] ^ 1]))
    res = inv(project, "verify-image", "--release=2026C3.0")
    assert res.returncode == 1 and "image sha256 mismatch" in res.stderr and "Traceback" not in res.stderr


# --- OS templates ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["win11-ltsc-2026.1", "win11-ltsc-2025.12", "ws2025-datacenter-2026.3"])
def test_template_versions_accepted(name: str) -> None:
    assert build.check_template_version(name) == name


@pytest.mark.parametrize("name", ["Win11-ltsc-2026.1", "win11-ltsc-2026", "win11-ltsc-2026.01", "win11_ltsc-2026.1",
                                  "win11-ltsc-1999.1", "-2026.1", "win11-ltsc-2026.1\n", "", None, "win11 2026.1"])
def test_template_versions_refused(name: object) -> None:
    with pytest.raises(InputError, match="win11-ltsc-2026.1"):
        build.check_template_version(name)


def test_lab_template_is_registered_once_and_never_replaced(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "Windows" / "System32").mkdir(parents=True)
    (base / "Windows" / "System32" / "kernel.dll").write_bytes(b"k" * 1000)
    (base / "Users" / "Public").mkdir(parents=True)
    store, records = ArtifactStore(tmp_path / "store"), BuildRecords(tmp_path / "builds")
    rec = build.build_lab_template(store=store, records=records, version="win11-ltsc-2026.1", base=base,
                                   workdir=tmp_path / "w")
    assert rec.status == "ok" and store.get("win11-ltsc-2026.1").kind == "os-template"
    assert not store.path_of("win11-ltsc-2026.1").stat().st_mode & stat.S_IWUSR
    again = build.build_lab_template(store=store, records=records, version="win11-ltsc-2026.1", base=base,
                                     workdir=tmp_path / "w")
    assert again.sha256 == rec.sha256
    (base / "Windows" / "System32" / "kernel.dll").write_bytes(b"x" * 1000)
    with pytest.raises(ArtifactError, match="never modified"):
        build.build_lab_template(store=store, records=records, version="win11-ltsc-2026.1", base=base,
                                 workdir=tmp_path / "w")
    assert store.get("win11-ltsc-2026.1").sha256 == rec.sha256


HOSTILE = "p<a>&s\"s'w]]>ord $(x) `n"
SETTINGS = TemplateSettings(version="win11-ltsc-2026.1", admin_password="example-Passw0rd",
                            features=["NetFx3"])


def test_unattend_matches_golden_and_is_valid_xml() -> None:
    text = render_unattend(SETTINGS, templates=ROOT / "templates")
    assert text == (GOLDEN / "autounattend.xml").read_text(encoding="utf-8"), \
        "refresh tests/golden/unattend after a deliberate change (see docs/images.md)"
    doc = ET.fromstring(text.encode("utf-8"))
    ns = {"u": "urn:schemas-microsoft-com:unattend"}
    assert {s.get("pass") for s in doc.findall("u:settings", ns)} == {"specialize", "oobeSystem"}
    cmd = doc.find(".//u:FirstLogonCommands/u:SynchronousCommand/u:CommandLine", ns).text
    assert cmd.endswith("C:\\Windows\\Setup\\Scripts\\provision.ps1")


def test_unattend_escapes_every_value() -> None:
    hostile = TemplateSettings(version="win11-ltsc-2026.1", admin_password=HOSTILE, organization=HOSTILE,
                               owner=HOSTILE, time_zone=HOSTILE, product_key=HOSTILE)
    doc = ET.fromstring(render_unattend(hostile, templates=ROOT / "templates").encode("utf-8"))
    ns = {"u": "urn:schemas-microsoft-com:unattend"}
    assert doc.find(".//u:AdministratorPassword/u:Value", ns).text == HOSTILE
    assert doc.find(".//u:RegisteredOrganization", ns).text == HOSTILE
    assert doc.find(".//u:ProductKey", ns).text == HOSTILE


def test_unattend_needs_a_password() -> None:
    with pytest.raises(InputError, match="IMAGING_TEMPLATE_PASSWORD"):
        render_unattend(TemplateSettings(version="win11-ltsc-2026.1", admin_password=""), templates=ROOT / "templates")


def test_provision_script_matches_golden_and_parses() -> None:
    text = render_provision(SETTINGS, templates=ROOT / "templates")
    assert text == (GOLDEN / "provision.ps1").read_text(encoding="utf-8")
    assert not PARSER.parse(text.encode("utf-8")).root_node.has_error
    assert text.rstrip().endswith("/generalize /oobe /shutdown /quiet")
    hostile = render_provision(TemplateSettings(version="win11-ltsc-2026.1", admin_password="x",
                                                features=[HOSTILE]), templates=ROOT / "templates")
    assert not PARSER.parse(hostile.encode("utf-8")).root_node.has_error


# --- the build-host steps on the lab provider ------------------------------------------------------------

def test_lab_build_host_steps_build_register_and_remove(tmp_path: Path) -> None:
    from imaging.model.steps import Step
    from imaging.providers.lab.provider import LabProvider

    lab = LabProvider(tmp_path / "lab")
    src = apps_tree(lab.path("HV1", "D:\\src\\apps"))
    step = Step("build_apps_disk", "HV1", {"vhd_path": "D:\\Imaging\\builds\\apps-2026C3.0.vhdx",
                                            "source_path": "D:\\src\\apps", "label": "Apps", "size_gb": 2,
                                            "work_root": "D:\\Imaging\\tmp", "expect_version": "2026C3.0"}, "t")
    first = lab.run(step)
    assert first["changed"] and len(first["files"]) == 5 and first["sha256"]
    (src / "extra.txt").write_text("late")
    again = lab.run(step)
    assert not again["changed"] and again["sha256"] == first["sha256"]
    records = BuildRecords(tmp_path / "builds")
    from imaging.model.inventory import Host

    host = Host(name="HV1", provider="lab", address="127.0.0.1", storage_root="D:\\Imaging",
                share="\\\\fs\\imaging")
    rec = build.build_apps_on_host(records=records, run=lab.run, host=host, rel=RELEASES["2026C3.0"],
                                   source_path="D:\\src\\apps", size_gb=2)
    assert rec.status == "ok" and rec.manifest and len(rec.manifest["files"]) == 5
    removed = lab.run(Step("remove_image", "HV1", {"path": step.inputs["vhd_path"], "sha256": first["sha256"]}, "t"))
    assert removed["changed"] and not lab.path("HV1", step.inputs["vhd_path"]).exists()


def test_cli_build_template_lab_base_tree_and_build_host(project: Path, tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "base"
    (base / "Windows" / "System32").mkdir(parents=True)
    (base / "Windows" / "System32" / "ntoskrnl.exe").write_bytes(b"nt" * 500)
    res = inv(project, "build-template", "--version=win11-ltsc-2027.1", f"--base={base}")
    assert res.returncode == 0, res.stderr
    assert ArtifactStore(project / ".state" / "store").get("win11-ltsc-2027.1").kind == "os-template"
    (base / "Windows" / "System32" / "ntoskrnl.exe").write_bytes(b"changed")
    res = inv(project, "build-template", "--version=win11-ltsc-2027.1", f"--base={base}")
    assert res.returncode == 1 and "never modified" in res.stderr
    res = inv(project, "build-template", "--version=Win11-2027", f"--base={base}")
    assert res.returncode == 1 and "win11-ltsc-2026.1" in res.stderr

    # The build-host path: the step rendered for a host, carried out here by the lab provider.
    iso = project / ".state" / "lab" / "hosts" / "HVHOST01" / "D" / "iso" / "ltsc"
    (iso / "Windows").mkdir(parents=True)
    (iso / "Windows" / "explorer.exe").write_bytes(b"MZ")
    args = ("build-template", "--version=win11-ltsc-2027.2", "--host=HVHOST01", "--iso=D:\\iso\\ltsc")
    monkeypatch.delenv("IMAGING_TEMPLATE_PASSWORD", raising=False)
    res = inv(project, *args, "--dry-run")
    assert res.returncode == 1 and "IMAGING_TEMPLATE_PASSWORD" in res.stderr
    monkeypatch.setenv("IMAGING_TEMPLATE_PASSWORD", "example-<&>-pw")
    res = inv(project, *args, "--dry-run")
    assert res.returncode == 0 and "would run on HVHOST01" in res.stdout
    res = inv(project, *args)
    assert res.returncode == 0, res.stderr
    rec = BuildRecords(project / ".state" / "builds").get("os-template", "win11-ltsc-2027.2")
    assert rec.status == "ok" and rec.sha256
    # ... and it entered the store, by the image share, verified against what the host reported
    stored = ArtifactStore(project / ".state" / "store").get("win11-ltsc-2027.2")
    assert stored.sha256 == rec.sha256 and stored.kind == "os-template" and rec.manifest
    built = next((project / ".state" / "lab" / "hosts" / "HVHOST01").rglob("win11-ltsc-2027.2.vhdx"))
    answer = ET.fromstring((built / "content" / "Windows" / "Panther" / "unattend.xml").read_bytes())
    ns = {"u": "urn:schemas-microsoft-com:unattend"}
    assert answer.find(".//u:AdministratorPassword/u:Value", ns).text == "example-<&>-pw"
    assert (built / "content" / "Windows" / "Setup" / "Scripts" / "provision.ps1").exists()
