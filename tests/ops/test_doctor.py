"""`invoke doctor` (issue 16): a read-only check of every host; on the lab it passes, and a host broken by
hand (share missing, storage root missing, a VM deleted) is named with each failure and its fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imaging.core.hashing import tree_manifest
from imaging.ops import doctor as doctoring
from imaging.ops import reimage as reimaging
from tests.cli.test_cli import inv
from tests.ops.test_failed_undo import _ctx


def test_doctor_passes_on_the_lab_and_changes_nothing(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    before = tree_manifest(project / ".state" / "lab", exclude=("locks",))
    checks = doctoring.doctor(ctx)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.host for c in checks} == set(ctx.inventory.hosts)
    [guest] = [c for c in checks if c.host == "HVHOST04" and c.name == "powershell direct"]
    assert "NDXZOOM answered" in guest.detail and "as NDXZOOM" in guest.detail
    assert tree_manifest(project / ".state" / "lab", exclude=("locks",)) == before
    res = inv(project, "doctor", "--hosts=HVHOST04")
    assert res.returncode == 0 and "every check passed on 1 host(s)" in res.stdout, res.stdout + res.stderr


def test_doctor_names_each_failure_of_a_broken_host_and_its_fix(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    lab = ctx.providers.lab
    shutil.rmtree(lab.path("HVHOST04", "\\\\imagestore.controls.example.org\\images"))  # the share is gone
    shutil.rmtree(lab.path("HVHOST02", "D:\\Imaging"))  # a storage root that is not there
    (lab.lab / "hosts" / "HVHOST04" / "vms" / "NDXZOOM.json").unlink()  # a VM deleted by hand
    res = inv(project, "doctor", "--json")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    failed = {(c["host"], c["name"]): c for c in json.loads(res.stdout) if not c["ok"]}
    assert ("HVHOST02", "storage root") in failed and "D:\\Imaging does not exist" in \
        failed[("HVHOST02", "storage root")]["detail"]
    assert "create D:\\Imaging on HVHOST02" in failed[("HVHOST02", "storage root")]["fix"]
    assert ("HVHOST04", "image share") in failed and failed[("HVHOST04", "image share")]["fix"]
    vms = failed[("HVHOST04", "vms")]
    assert "NDXZOOM (ZOOM runs 2026C3.0 by the journal)" in vms["detail"] and "reimage" in vms["fix"]
    assert "check(s) failed" in res.stderr
    table = inv(project, "doctor", "--hosts=HVHOST02")
    assert table.returncode != 0 and "FAILED" in table.stdout and "fix: create D:\\Imaging" in table.stdout
