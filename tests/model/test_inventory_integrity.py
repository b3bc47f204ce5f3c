"""A damaged inventory is an error naming the file, never a smaller fleet; names Windows cannot hold are
refused wherever a name is checked (issue 13, items 8 and 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging.core.errors import InputError, ValidationFailed
from imaging.core.quoting import check_name
from imaging.model.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    dest = tmp_path / "instruments"
    shutil.copytree(ROOT / "instruments", dest)
    return dest


def _problems(root: Path) -> str:
    with pytest.raises(ValidationFailed) as err:
        load_inventory(root)
    return str(err.value)


def test_an_empty_instrument_file_is_an_error_not_a_smaller_fleet(inventory: Path) -> None:
    (inventory / "fleet" / "ZOOM.yaml").write_text("")
    text = _problems(inventory)
    assert "ZOOM.yaml" in text and "file is empty" in text


@pytest.mark.parametrize("name", ["hosts.yaml", "groups.yaml", "defaults.yaml"])
def test_an_empty_inventory_file_is_named(inventory: Path, name: str) -> None:
    (inventory / name).write_text("# nothing here\n")
    text = _problems(inventory)
    assert name in text and "file is empty" in text


@pytest.mark.parametrize("lines", [11, 13, 16])
def test_an_inventory_file_cut_at_a_line_boundary_is_named_with_git_checkout(project: Path, lines: int) -> None:
    """defaults.yaml cut short is still valid YAML that silently lost the end of rescue_exclude; git knows."""
    path = project / "instruments" / "defaults.yaml"
    whole = path.read_text()
    path.write_text("".join(whole.splitlines(keepends=True)[:lines]))
    text = _problems(project / "instruments")
    assert "defaults.yaml: this file is the first" in text and "it looks cut off" in text
    assert "git checkout -- instruments/defaults.yaml" in text
    path.write_text(whole + "# a comment added at the end is an edit, not a cut\n")
    load_inventory(project / "instruments")


def test_yaml_files_the_inventory_does_not_read_are_reported(inventory: Path) -> None:
    (inventory / "WISH.yaml").write_text("name: WISH\n")           # an instrument in the wrong folder
    (inventory / "fleet" / "LET.yml").write_text("name: LET\n")    # the wrong extension
    text = _problems(inventory)
    assert "WISH.yaml: this file is not read" in text and "LET.yml: this file is not read" in text


@pytest.mark.parametrize("bad", ["NDXZOOM\n", "NUL", "nul.txt", "COM1", "NDXZOOM.", "LPT9.log", "a b", ""])
def test_check_name_refuses_what_windows_cannot_hold(bad: str) -> None:
    with pytest.raises(InputError):
        check_name(bad, field="vm")


@pytest.mark.parametrize("vm", ["NUL", "NDXZOOM.", "COM3"])
def test_validate_refuses_a_vm_name_windows_cannot_hold(inventory: Path, vm: str) -> None:
    path = inventory / "fleet" / "ZOOM.yaml"
    path.write_text(path.read_text() + f"vm: '{vm}'\n")
    text = _problems(inventory)
    assert "ZOOM.yaml" in text and "vm" in text


@given(st.text(max_size=70))
def test_check_name_accepts_only_full_matches_of_its_rule(value: str) -> None:
    try:
        check_name(value, field="x")
    except InputError:
        return
    assert value.isascii() and value.strip() == value and "\n" not in value and not value.endswith(".")
    assert value.split(".", 1)[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
    assert all(c.isalnum() or c in "_.-" for c in value) and 1 <= len(value) <= 63


@pytest.mark.parametrize("switch", ["Instruments\nStop-Computer", "Instru\x00ments", "Instruments ", "Ins|truments"])
def test_validate_refuses_a_switch_name_windows_cannot_hold(inventory: Path, switch: str) -> None:
    hosts = inventory / "hosts.yaml"
    text = hosts.read_text()
    hosts.write_text(text.replace("    provider: lab\n", f"    provider: lab\n    switch: {json.dumps(switch)}\n", 1))
    problems = _problems(inventory)
    assert "hosts.yaml" in problems and "switch" in problems
