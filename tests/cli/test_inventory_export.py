"""Issue 18, item 4: `invoke inventory --format=ansible` writes the fleet as an Ansible inventory, checked by
Ansible's own `ansible-inventory --list`; an inventory that does not validate is refused, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from settings_support import inv

ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


def _ansible_list(path: Path) -> dict:
    if not ANSIBLE_INVENTORY.exists():
        pytest.skip("ansible-core is not installed (it is in the dev extra)")
    res = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], capture_output=True, text=True,
                         check=False, env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "PATH": "/usr/bin:/bin",
                                           "ANSIBLE_LOCAL_TEMP": str(path.parent / "ansible-tmp"),
                                           "HOME": str(path.parent)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_the_ansible_inventory_is_read_by_ansible_with_every_group(project: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGING_HYPERV_PASSWORD", "Secret-Not-Exported-77")
    out = tmp_path / "fleet.yaml"
    res = inv(project, "inventory", "--format=ansible", f"--out={out}")
    assert res.returncode == 0, res.stdout + res.stderr
    listed = _ansible_list(out)
    hostvars = listed["_meta"]["hostvars"]
    assert len(listed["instruments"]["hosts"]) == 34 and len(listed["hyperv_hosts"]["hosts"]) == 6
    assert "NDXZOOM" in listed["group_b"]["hosts"] and "NDXZOOM" in listed["on_hvhost04"]["hosts"]
    assert "NDXZOOM" in listed["role_small_angle_scattering"]["hosts"]
    assert set(listed["legacy_control_system"]["hosts"]) and "NDXZOOM" not in listed["legacy_control_system"]["hosts"]
    assert hostvars["NDXZOOM"]["ansible_connection"] == "psrp" and hostvars["NDXZOOM"]["imaging_instrument"] == "ZOOM"
    assert hostvars["HVHOST04"]["ansible_host"] == "hvhost04.controls.example.org"
    assert hostvars["HVHOST04"]["ansible_psrp_cert_validation"] == "validate"
    text = out.read_text()
    assert "Secret-Not-Exported-77" not in text and "password" not in text.lower()


def test_an_inventory_that_does_not_validate_is_refused_and_nothing_is_written(project: Path, tmp_path: Path) -> None:
    zoom = project / "instruments" / "fleet" / "ZOOM.yaml"
    zoom.write_text(zoom.read_text().replace("host: HVHOST04", "host: HVHOST99"))
    out = tmp_path / "fleet.yaml"
    res = inv(project, "inventory", "--format=ansible", f"--out={out}")
    assert res.returncode != 0 and not out.exists()
    assert "ZOOM.yaml" in res.stderr + res.stdout and "HVHOST99" in res.stderr + res.stdout
    bad = inv(project, "inventory", "--format=csv")
    assert bad.returncode != 0 and "--format=ansible" in bad.stderr + bad.stdout
