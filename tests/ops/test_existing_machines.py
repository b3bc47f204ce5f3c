"""Machines imaging did not make (issue 15, in part): the survey reads a hand-made VM without changing it, and
a reimage refuses to replace its only disk, naming the survey and the way to keep the old machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imaging.core.errors import ImagingError
from imaging.core.hashing import tree_manifest
from imaging.ops import reimage as reimaging
from imaging.ops import survey as surveying
from tests.cli.test_cli import inv
from tests.ops.test_failed_undo import _ctx


def _disk(ctx, name: str) -> Path:  # noqa: ANN001
    inst = ctx.inventory.instrument(name)
    return ctx.providers.lab.path(inst.host, f"D:\\Hyper-V\\{inst.vm}\\{inst.vm}.vhdx")


def test_survey_reads_a_handmade_vm_and_changes_nothing(project: Path) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    before = tree_manifest(_disk(ctx, "GEM"))
    out = surveying.survey(ctx, gem)
    assert tree_manifest(_disk(ctx, "GEM")) == before  # read only
    assert out.exists and out.generation == 1 and out.power == "Running" and not out.imaging_layout
    assert [d["parent"] for d in out.disks] == [None] and out.disks[0]["bytes"] > 1_000_000
    assert out.folders["C:\\data"] == {"kind": "data", "exists": True, "files": 2, "bytes": 980000}
    assert out.folders["C:\\LabVIEW Modules\\var"]["files"] == 2  # the old system's var folder
    assert {u["path"] for u in out.user_files} == {"C:\\Users\\operator\\Desktop\\shift-notes.txt",
                                                   "C:\\Users\\operator\\Documents\\alignment.xlsx"}
    assert [o["path"] for o in out.other] == ["C:\\Temp\\old-installer.log"]  # nothing goes unseen
    assert "hand-made" in out.verdict
    assert json.loads(Path(out.report).read_text())["user_files"] == out.user_files


def test_survey_of_a_vm_imaging_made_and_of_no_vm(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    made = surveying.survey(ctx, ctx.inventory.instrument("ZOOM"))
    assert made.imaging_layout and "made by imaging" in made.verdict
    none = surveying.survey(ctx, ctx.inventory.instrument("ALF"))
    assert not none.exists and "nothing to adopt" in none.verdict


def test_a_reimage_refuses_to_replace_the_only_disk_of_a_handmade_vm(project: Path) -> None:
    ctx = _ctx(project)
    gem = ctx.inventory.instrument("GEM")
    surveying.make_handmade(ctx, gem)
    before = tree_manifest(_disk(ctx, "GEM"))
    with pytest.raises(ImagingError) as err:
        reimaging.reimage(ctx, "GEM", "2026C3.0")
    text = str(err.value)
    assert "hand-made VM" in text and "invoke survey --instrument=GEM" in text and "NDXGEM-legacy" in text
    assert tree_manifest(_disk(ctx, "GEM")) == before and ctx.journal.operations(instrument="GEM") == []
    res = inv(project, "reimage", "--instrument=GEM", "--dry-run")
    assert res.returncode != 0 and "hand-made VM" in res.stderr and "Traceback" not in res.stderr
    res = inv(project, "survey", "--instrument=GEM")
    assert res.returncode == 0 and "shift-notes.txt" in res.stdout and "hand-made" in res.stdout
