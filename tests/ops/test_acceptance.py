"""`invoke acceptance` (issue 16): the first contact with a host as one command, here against the lab: it
refuses an instrument that is not marked scratch, runs doctor and every action once on a scratch
instrument, cleans up (keeping its Var and Data disks) and writes a report of each phase and script."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imaging.core.errors import InputError
from imaging.ops import acceptance as accepting
from imaging.ops import facts
from tests.cli.test_cli import inv
from tests.conftest import git
from tests.ops.test_failed_undo import _ctx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch(project: Path) -> Path:
    text = (ROOT / "instruments" / "examples" / "scratch" / "SCRATCH.yaml").read_text()
    (project / "instruments" / "fleet" / "SCRATCH.yaml").write_text(text.replace("HVHOST01", "HVHOST06"))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a scratch instrument for acceptance")
    return project


def test_acceptance_refuses_an_instrument_that_is_not_scratch(scratch: Path) -> None:
    ctx = _ctx(scratch)
    with pytest.raises(InputError) as err:
        accepting.check_scratch(ctx, "HVHOST04", "ZOOM")
    assert err.value.field == "scratch" and err.value.file.endswith("ZOOM.yaml") and "scratch: true" in err.value.fix
    with pytest.raises(InputError, match="lives on HVHOST06"):
        accepting.check_scratch(ctx, "HVHOST04", "SCRATCH")
    assert ctx.journal.operations() == []


def test_acceptance_runs_every_action_once_cleans_up_and_reports(scratch: Path) -> None:
    res = inv(scratch, "acceptance", "--host=HVHOST06", "--instrument=SCRATCH", "--release=2026C3.0",
              "--next-release=2026C3.1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "acceptance of HVHOST06 passed" in res.stdout
    report = Path(res.stdout.split("report: ")[1].split()[0])
    text = report.read_text()
    for phase in ("doctor", "reimage", "drift read", "hotfix and revert", "prepare", "switch", "rollback",
                  "cleanup"):
        assert f"| {phase}" in text, phase
    for action in ("create_child_disk", "inject_first_boot", "wait_guest", "apply_hotfix", "revert_hotfix",
                   "set_host_note", "rescue_user_files", "remove_vm"):
        assert f"| {action} | ok |" in text, action
    ctx = _ctx(scratch)
    inst = ctx.inventory.instrument("SCRATCH")
    assert not facts.observe(ctx, inst).exists  # the VM is gone
    lab = ctx.providers.lab
    folder = lab.path(inst.host, "D:\\Imaging\\instruments\\NDXSCRATCH")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "NDXSCRATCH-data.vhdx", "NDXSCRATCH-var.vhdx"]  # generations deleted, Var and Data kept


def test_a_failed_phase_stops_acceptance_and_still_cleans_up(scratch: Path) -> None:
    ctx = _ctx(scratch)
    inst = ctx.inventory.instrument("SCRATCH")
    shutil.rmtree(ctx.providers.lab.path(inst.host, "\\\\imagestore.controls.example.org\\images"))
    out = accepting.run_acceptance(ctx, "HVHOST06", "SCRATCH", release="2026C3.0")
    assert not out.ok and [p.name for p in out.phases] == ["doctor", "cleanup"]
    assert "image share" in out.phases[0].detail and "fix:" in out.phases[0].detail
    assert out.report is not None and "FAILED" in out.report.read_text()
