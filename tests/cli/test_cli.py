"""The front door: tasks are listed with help, bad input fails clearly and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from imaging.core.hashing import tree_manifest

ROOT = Path(__file__).resolve().parents[2]


def inv(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("invoke")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "invoke"]
    return subprocess.run([*cmd, "--search-root", str(ROOT), *args], capture_output=True, text=True,
                          env={**os.environ, "IMAGING_ROOT": str(project), "COLUMNS": "200"}, timeout=300)


def test_list_shows_the_tasks(project: Path) -> None:
    out = inv(project, "--list").stdout
    for name in ("reimage", "status", "validate", "releases", "resume", "rollback", "stage"):
        assert name in out


def test_every_task_has_help_for_its_options(project: Path) -> None:
    out = inv(project, "--help", "reimage").stdout
    assert "--instrument" in out and "--dry-run" in out and "print the plan and change nothing" in out


def test_validate_passes_on_the_shipped_inventory(project: Path) -> None:
    res = inv(project, "validate")
    assert res.returncode == 0, res.stderr
    assert "inventory ok" in res.stdout


def test_bad_inventory_fails_every_task_and_changes_nothing(project: Path) -> None:
    path = project / "instruments" / "fleet" / "ZOOM.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["host"] = "NOWHERE"
    path.write_text(yaml.safe_dump(doc))
    for args in (["validate"], ["reimage", "--instrument=ZOOM"], ["status"]):
        res = inv(project, *args)
        assert res.returncode == 1
        assert "ZOOM.yaml" in res.stderr and "field 'host'" in res.stderr and "Traceback" not in res.stderr
    assert not (project / ".state" / "lab").exists()


def test_reimage_dry_run_then_reimage_then_status_json(project: Path) -> None:
    res = inv(project, "reimage", "--instrument=ZOOM", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "dry run: nothing was changed" in res.stdout
    lab = project / ".state" / "lab" / "hosts"
    before = tree_manifest(lab) if lab.exists() else {}
    assert (tree_manifest(lab) if lab.exists() else {}) == before
    res = inv(project, "reimage", "--instrument=ZOOM")
    assert res.returncode == 0, res.stderr
    assert "ZOOM: done" in res.stdout
    rows = json.loads(inv(project, "status", "--json", "--instruments=ZOOM").stdout)
    assert rows[0]["running"] == rows[0]["desired"]


def test_unknown_instrument_is_a_clear_error(project: Path) -> None:
    res = inv(project, "reimage", "--instrument=NOPE")
    assert res.returncode == 1 and "no instrument named 'NOPE'" in res.stderr and "ZOOM" in res.stderr


def test_an_os_error_is_a_message_with_the_path_and_the_fix_never_a_traceback(project: Path, tmp_path: Path) -> None:
    state = tmp_path / ("s" * 300)  # a folder name no file system accepts: ENAMETOOLONG
    exe = Path(sys.executable).with_name("invoke")
    res = subprocess.run([str(exe), "--search-root", str(ROOT), "reimage", "--instrument=ZOOM"], capture_output=True,
                         text=True, env={**os.environ, "IMAGING_ROOT": str(project), "IMAGING_STATE": str(state)},
                         timeout=300)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "too long" in res.stderr and "IMAGING_STATE" in res.stderr
