"""The lab enforces the rules Hyper-V enforces and the tool's own, and clones cheaply."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imaging.core.errors import LockHeld, ProviderError
from imaging.core.files import write_json
from imaging.core.hashing import tree_manifest
from imaging.model.steps import Step
from imaging.providers.lab.fs import host_path
from imaging.providers.lab.provider import LabProvider

H = "HVHOST01"


def run(lab: LabProvider, action: str, **inputs: object) -> dict:
    return lab.run(Step(action, H, dict(inputs), action))


def make_parent(lab: LabProvider, winpath: str, files: dict[str, bytes]) -> Path:
    d = lab.path(H, winpath)
    for rel, data in files.items():
        p = d / "content" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    write_json(d / "disk.json", {"role": "template", "label": None, "parent": None, "read_only": True,
                                 "size_gb": 0, "attached_to": None, "sha256": "0" * 64})
    return d


@pytest.fixture
def lab(tmp_path: Path) -> LabProvider:
    return LabProvider(tmp_path / "lab")


def vm_with_disks(lab: LabProvider) -> None:
    make_parent(lab, r"D:\Imaging\images\os.vhdx", {"Windows/a.dll": b"a", "Users/Public/x": b"x"})
    run(lab, "ensure_vm", vm="NDXT", generation=2, memory_mb=4096, cpus=2, switch="s")
    run(lab, "create_child_disk", path=r"D:\Imaging\instruments\NDXT\os-1.vhdx",
        parent_path=r"D:\Imaging\images\os.vhdx", role="os")
    run(lab, "create_disk", path=r"D:\Imaging\instruments\NDXT\var.vhdx", size_gb=1, label="Var", role="var")
    run(lab, "attach_disk", vm="NDXT", slot=0, path=r"D:\Imaging\instruments\NDXT\os-1.vhdx")
    run(lab, "attach_disk", vm="NDXT", slot=3, path=r"D:\Imaging\instruments\NDXT\var.vhdx")


def test_windows_paths_map_into_the_lab_in_one_place(tmp_path: Path) -> None:
    assert host_path(tmp_path, H, r"D:\Imaging\x.vhdx") == tmp_path / "hosts" / H / "D" / "Imaging" / "x.vhdx"
    assert host_path(tmp_path, H, r"\\srv\images\a.tar") == tmp_path / "shares" / "srv" / "images" / "a.tar"
    with pytest.raises(Exception, match="unsafe path segment"):
        host_path(tmp_path, H, r"D:\Imaging\..\etc")


def test_child_is_a_hardlink_clone_and_writes_never_reach_the_parent(lab: LabProvider) -> None:
    parent = make_parent(lab, r"D:\Imaging\images\os.vhdx", {f"d{i % 7}/f{i}": b"x" * i for i in range(200)})
    before = tree_manifest(parent / "content")
    res = run(lab, "create_child_disk", path=r"D:\Imaging\c.vhdx", parent_path=r"D:\Imaging\images\os.vhdx",
              role="os")
    assert res == {"changed": True, "files": 200}
    child = lab.path(H, r"D:\Imaging\c.vhdx") / "content"
    assert os.stat(child / "d1/f1").st_ino == os.stat(parent / "content/d1/f1").st_ino
    # a guest write replaces the file by rename: the parent keeps its bytes
    run(lab, "ensure_vm", vm="NDXT", generation=2, memory_mb=4096, cpus=2, switch="s")
    run(lab, "attach_disk", vm="NDXT", slot=0, path=r"D:\Imaging\c.vhdx")
    run(lab, "start_vm", vm="NDXT")
    lab.guest_write(H, "NDXT", r"C:\d1\f1", b"changed by the guest")
    assert (child / "d1/f1").read_bytes() == b"changed by the guest"
    assert tree_manifest(parent / "content") == before
    # creating it again is a no-op
    assert run(lab, "create_child_disk", path=r"D:\Imaging\c.vhdx", parent_path=r"D:\Imaging\images\os.vhdx",
               role="os") == {"changed": False}


def test_parent_must_be_read_only(lab: LabProvider) -> None:
    run(lab, "create_disk", path=r"D:\Imaging\plain.vhdx", size_gb=1, label="X", role="settings")
    with pytest.raises(ProviderError, match="not read-only"):
        run(lab, "create_child_disk", path=r"D:\Imaging\c.vhdx", parent_path=r"D:\Imaging\plain.vhdx", role="os")


def test_no_attach_or_detach_while_running(lab: LabProvider) -> None:
    vm_with_disks(lab)
    run(lab, "create_disk", path=r"D:\Imaging\instruments\NDXT\data.vhdx", size_gb=1, label="Data", role="data")
    run(lab, "start_vm", vm="NDXT")
    with pytest.raises(ProviderError, match="running"):
        run(lab, "attach_disk", vm="NDXT", slot=4, path=r"D:\Imaging\instruments\NDXT\data.vhdx")
    with pytest.raises(ProviderError, match="running"):
        run(lab, "detach_disk", vm="NDXT", slot=3, path=r"D:\Imaging\instruments\NDXT\var.vhdx")


def test_a_disk_is_attached_to_one_vm_at_most(lab: LabProvider) -> None:
    vm_with_disks(lab)
    run(lab, "ensure_vm", vm="NDXOTHER", generation=2, memory_mb=4096, cpus=2, switch="s")
    with pytest.raises(ProviderError, match="already attached to NDXT"):
        run(lab, "attach_disk", vm="NDXOTHER", slot=3, path=r"D:\Imaging\instruments\NDXT\var.vhdx")


def test_var_and_data_are_never_deleted_or_recreated(lab: LabProvider) -> None:
    vm_with_disks(lab)
    run(lab, "detach_disk", vm="NDXT", slot=3, path=r"D:\Imaging\instruments\NDXT\var.vhdx")
    with pytest.raises(ProviderError, match="never deleted"):
        run(lab, "delete_disk", path=r"D:\Imaging\instruments\NDXT\var.vhdx", role="var")
    marker = lab.path(H, r"D:\Imaging\instruments\NDXT\var.vhdx") / "content" / "keep.txt"
    marker.write_text("precious")
    assert run(lab, "create_disk", path=r"D:\Imaging\instruments\NDXT\var.vhdx", size_gb=1, label="Var",
               role="var") == {"changed": False}
    assert marker.read_text() == "precious"
    with pytest.raises(ProviderError, match="exists as a var disk"):
        run(lab, "create_disk", path=r"D:\Imaging\instruments\NDXT\var.vhdx", size_gb=1, label="Data",
            role="data")


def test_attached_and_parent_disks_are_never_deleted(lab: LabProvider) -> None:
    vm_with_disks(lab)
    with pytest.raises(ProviderError, match="attached"):
        run(lab, "delete_disk", path=r"D:\Imaging\instruments\NDXT\os-1.vhdx", role="os")
    with pytest.raises(ProviderError, match="read-only parent"):
        run(lab, "delete_disk", path=r"D:\Imaging\images\os.vhdx", role="os")


def test_guest_mounts_by_label_and_links_replacing_only_empty_placeholders(lab: LabProvider) -> None:
    vm_with_disks(lab)
    run(lab, "start_vm", vm="NDXT")
    root = lab.guest_root(H, "NDXT")
    (root / "Instrument" / "Var").mkdir(parents=True)  # an empty placeholder
    vols = [{"label": "Var", "mount": r"C:\volumes\Var", "link": r"C:\Instrument\Var"}]
    assert run(lab, "configure_guest", vm="NDXT", volumes=vols)["changed"] is True
    assert run(lab, "configure_guest", vm="NDXT", volumes=vols)["changed"] is False
    lab.guest_write(H, "NDXT", r"C:\Instrument\Var\log.txt", b"hello")
    var = lab.path(H, r"D:\Imaging\instruments\NDXT\var.vhdx") / "content"
    assert (var / "log.txt").read_bytes() == b"hello"
    # a folder with content is never replaced by a link
    (root / "data").mkdir()
    (root / "data" / "run1.nxs").write_bytes(b"data")
    run(lab, "create_disk", path=r"D:\Imaging\instruments\NDXT\data.vhdx", size_gb=1, label="Data", role="data")
    run(lab, "stop_vm", vm="NDXT", timeout_s=1)
    run(lab, "attach_disk", vm="NDXT", slot=4, path=r"D:\Imaging\instruments\NDXT\data.vhdx")
    run(lab, "start_vm", vm="NDXT")
    with pytest.raises(ProviderError, match="with content"):
        run(lab, "configure_guest", vm="NDXT",
            volumes=[{"label": "Data", "mount": r"C:\volumes\Data", "link": r"C:\data"}])
    assert (root / "data" / "run1.nxs").read_bytes() == b"data"


def test_lock_is_exclusive_per_operation(lab: LabProvider) -> None:
    lock = r"D:\Imaging\locks\NDXT.lock"
    assert run(lab, "acquire_lock", vm="NDXT", lock_path=lock, op_id="a", owner="me")["changed"]
    assert not run(lab, "acquire_lock", vm="NDXT", lock_path=lock, op_id="a", owner="me")["changed"]
    with pytest.raises(LockHeld, match="locked by operation a"):
        run(lab, "acquire_lock", vm="NDXT", lock_path=lock, op_id="b", owner="you")
    with pytest.raises(ProviderError, match="belongs to operation a"):
        run(lab, "release_lock", vm="NDXT", lock_path=lock, op_id="b")
    assert run(lab, "release_lock", vm="NDXT", lock_path=lock, op_id="a")["changed"]


def test_rescue_finds_new_and_changed_files_outside_links(lab: LabProvider) -> None:
    vm_with_disks(lab)
    run(lab, "start_vm", vm="NDXT")
    lab.guest_write(H, "NDXT", r"C:\Users\operator\Desktop\notes.txt", b"beam notes")
    lab.guest_write(H, "NDXT", r"C:\Windows\a.dll", b"patched by hand")
    lab.guest_write(H, "NDXT", r"C:\Windows\Temp\junk.tmp", b"junk")
    run(lab, "stop_vm", vm="NDXT", timeout_s=1)
    res = run(lab, "rescue_user_files", vm="NDXT", os_path=r"D:\Imaging\instruments\NDXT\os-1.vhdx",
              template_path=r"D:\Imaging\images\os.vhdx", var_path=r"D:\Imaging\instruments\NDXT\var.vhdx",
              dest_rel="rescued/T1", exclude=[r"C:\Windows\Temp"])
    assert res["files"] == ["Users/operator/Desktop/notes.txt", "Windows/a.dll"]
    var = lab.path(H, r"D:\Imaging\instruments\NDXT\var.vhdx") / "content"
    assert (var / "rescued/T1/files/Users/operator/Desktop/notes.txt").read_bytes() == b"beam notes"
    assert (var / "rescued/T1/rescued.json").exists()
