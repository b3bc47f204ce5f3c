"""The shipped inventory validates; every kind of bad inventory is refused naming the file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from imaging.core.errors import ValidationFailed
from imaging.model.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    dst = tmp_path / "instruments"
    shutil.copytree(ROOT / "instruments", dst)
    return dst


def edit(path: Path, **changes: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc))


def problems(root: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as exc:
        load_inventory(root)
    return [str(p) for p in exc.value.problems]


def test_shipped_inventory_is_valid_and_realistic() -> None:
    inv = load_inventory(ROOT / "instruments")
    assert len(inv.instruments) >= 30
    assert len(inv.hosts) >= 4
    assert {i.group for i in inv.instruments.values()} == {"A", "B"}
    assert any(i.legacy_control_system for i in inv.instruments.values())
    zoom = inv.instrument("ZOOM")
    assert zoom.vm == "NDXZOOM"
    assert zoom.disks.apps.link == "C:\\Instrument\\Apps"
    assert zoom.disks.data.link == "C:\\data"
    assert inv.instrument("ndxzoom") is zoom
    assert all(h.provider == "lab" for h in inv.hosts.values())


def test_hyperv_example_inventory_is_valid() -> None:
    inv = load_inventory(ROOT / "instruments" / "examples" / "hyperv")
    assert all(h.provider == "hyperv" for h in inv.hosts.values())
    assert len(inv.instruments) >= 30


def test_unknown_key_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", colour="blue")
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "colour" in msg and "remove the key" in msg


def test_wrong_type_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", cpus="many")
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "field 'cpus'" in msg and "'many'" in msg


def test_wrong_type_in_nested_disk_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", disks={"data": {"size_gb": "huge"}})
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "disks.data.size_gb" in msg


def test_unknown_host_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", host="HVHOST99")
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "field 'host'" in msg and "HVHOST99" in msg and "HVHOST01" in msg


def test_unknown_group_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", group="C")
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "field 'group'" in msg and "'C'" in msg


def test_duplicate_vm_name_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", vm="NDXWISH")
    msgs = problems(inv)
    assert any("field 'vm'" in m and "NDXWISH" in m and "duplicate VM name" in m for m in msgs)


def test_duplicate_volume_label_is_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", disks={"data": {"label": "Var"}})
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "disks.data.label" in msg and "duplicate volume label" in msg


@pytest.mark.parametrize("field,value", [
    ("vm", "NDX ZOOM"), ("vm", "NDX$(rm)"), ("vm", "NDX'Z"), ("name", "../ZOOM"),
])
def test_unsafe_names_are_refused(inv: Path, field: str, value: str) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", **{field: value})
    msgs = problems(inv)
    assert any("ZOOM.yaml" in m and f"field '{field}'" in m and "not a safe name" in m for m in msgs)


def test_unsafe_label_and_link_are_refused(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", disks={"apps": {"label": "Apps;rm", "link": "C:\\Instrument\\..\\x"}})
    msgs = problems(inv)
    assert any("disks.apps.label" in m for m in msgs)
    assert any("disks.apps.link" in m for m in msgs)


def test_bad_host_fields_are_refused(inv: Path) -> None:
    doc = yaml.safe_load((inv / "hosts.yaml").read_text())
    doc["hosts"]["HVHOST01"]["provider"] = "vmware"
    doc["hosts"]["HVHOST02"]["share"] = "D:\\images"
    (inv / "hosts.yaml").write_text(yaml.safe_dump(doc))
    msgs = problems(inv)
    assert any("hosts.yaml" in m and "hosts.HVHOST01.provider" in m and "'lab'" in m for m in msgs)
    assert any("hosts.HVHOST02.share" in m and "UNC" in m for m in msgs)


def test_file_name_must_match_instrument(inv: Path) -> None:
    shutil.copy(inv / "fleet" / "ZOOM.yaml", inv / "fleet" / "ZOOM2.yaml")
    msgs = problems(inv)
    assert any("ZOOM2.yaml" in m and "field 'name'" in m and "rename the file" in m for m in msgs)


def test_broken_yaml_is_refused(inv: Path) -> None:
    (inv / "fleet" / "ZOOM.yaml").write_text("name: [ZOOM\n")
    [msg] = problems(inv)
    assert "ZOOM.yaml" in msg and "not valid YAML" in msg


def test_all_problems_are_reported_together(inv: Path) -> None:
    edit(inv / "fleet" / "ZOOM.yaml", host="NOPE")
    edit(inv / "fleet" / "WISH.yaml", group="Z")
    assert len(problems(inv)) == 2
