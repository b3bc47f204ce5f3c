"""Two operators, two processes, one instrument: a plan made from a stale view never acts on another
operator's work. B plans while A's reimage is midway (the VM is off); A finishes; B's operation then stops at
its check under the lock, before any change, and A's running VM stays running (issue 13, item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from imaging.core.config import Paths
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from imaging.ops.context import Context

ROOT = Path(__file__).resolve().parents[2]

OPERATOR_A = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from imaging.core.config import Paths
    from imaging.ops import reimage
    from imaging.ops.context import Context
    flag = Path(sys.argv[1])
    def slow(step):
        if step.action == "start_vm":  # midway: the VM is off and its disks are being swapped
            flag.write_text("midway")
            time.sleep(3)
    ctx = Context.load(Paths.from_env(), fault=slow)
    ctx.sample_sizes = (60, 40)
    print(reimage.reimage(ctx, "ZOOM", "2026C3.1").ok)
""")

OPERATOR_B = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from imaging.core.config import Paths
    from imaging.core.stamps import new_op_id
    from imaging.ops import reimage
    from imaging.ops.context import Context
    midway, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not midway.exists():
        time.sleep(0.05)
    ctx = Context.load(Paths.from_env())
    ctx.sample_sizes = (60, 40)
    op = new_op_id()
    plan = reimage.plan_for_reimage(ctx, "ZOOM", "2026C3.1", op_id=op, dry_run=True)
    while not go.exists():  # B's operator reads the plan; meanwhile A finishes
        time.sleep(0.05)
    out = ctx.executor().execute(plan, op_id=op)
    print(json.dumps({"ok": out.ok, "step": out.failed_step, "error": out.error, "restored": out.restored}))
""")


def _spawn(project: Path, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "IMAGING_ROOT": str(project), "PYTHONPATH": str(ROOT)})


def test_a_plan_made_from_a_stale_view_stops_before_it_touches_the_other_operators_vm(project: Path,
                                                                                      tmp_path: Path) -> None:
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (60, 40)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    midway, go = tmp_path / "midway", tmp_path / "go"
    a = _spawn(project, OPERATOR_A, str(midway))
    b = _spawn(project, OPERATOR_B, str(midway), str(go))
    a_out, a_err = a.communicate(timeout=120)
    assert a.returncode == 0 and a_out.strip() == "True", a_err
    go.write_text("go")
    b_out, b_err = b.communicate(timeout=120)
    assert b.returncode == 0, b_err
    result = json.loads(b_out.strip().splitlines()[-1])
    assert not result["ok"] and result["step"] == "check_state" and result["restored"]
    assert "changed since this plan was made" in result["error"]
    zoom = ctx.inventory.instrument("ZOOM")
    assert facts.observe(ctx, zoom).power == "Running"  # A's VM was never stopped by B
    assert facts.running_release(ctx, zoom) == "2026C3.1" and facts.unfinished(ctx, zoom) is None
    ctx.close()


def test_status_is_the_same_for_an_operator_whose_journal_never_saw_the_fleet(project: Path,
                                                                            tmp_path: Path) -> None:
    """Issue 16, one truth: operator A (this project's state folder) reimages, hotfixes, prepares and is
    killed holding a lock; operator B, another process with its own empty state folder and the same hosts,
    sees in `invoke status` what runs, the last operation, the hotfixes, the prepared generation and the
    lock, read from the hosts and the instruments' own records; and B's reimage cannot drop A's hotfix."""
    from tests.ops.test_prepare_switch import _inv_env

    a: dict[str, str] = {}
    b = {"IMAGING_STATE": str(tmp_path / "b-state"), "IMAGING_LAB": str(project / ".state" / "lab")}
    patch = str(ROOT / "hotfixes" / "examples" / "HF-2026C3-001")
    for args in (("reimage", "--instrument=ZOOM", "--release=2026C3.0"),
                 ("hotfix", f"--patch={patch}", "--instruments=ZOOM", "--yes"),
                 ("reimage", "--instrument=LET", "--release=2026C3.0"),
                 ("prepare", "--release=2026C3.1", "--instruments=LET", "--yes")):
        res = _inv_env(project, a, *args)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    killed = _inv_env(project, {"IMAGING_LAB_FAULTS": "*:start_vm#1@kill-before"}, "reimage", "--instrument=MARI",
                      "--release=2026C3.0")
    assert killed.returncode == -9

    def status(env: dict[str, str]) -> dict[str, dict]:
        res = _inv_env(project, env, "status", "--json", "--instruments=ZOOM,LET,MARI")
        assert res.returncode == 0, res.stderr
        return {r["instrument"]: r for r in json.loads(res.stdout)}

    mine, theirs = status(a), status(b)
    for name in ("ZOOM", "LET"):
        for key in ("running", "prepared", "hotfixes", "last_result"):
            assert theirs[name][key] == mine[name][key], (name, key, theirs[name], mine[name])
    assert theirs["ZOOM"]["running"] == "2026C3.0" and theirs["ZOOM"]["hotfixes"] == ["HF-2026C3-001"]
    assert theirs["ZOOM"]["last_operation"] == "reimage" and theirs["ZOOM"]["seen_from"] == "instrument"
    assert theirs["LET"]["prepared"].startswith("2026C3.1 (")
    assert theirs["MARI"]["locked_by"] and theirs["MARI"]["locked_by"] == mine["MARI"]["locked_by"]
    assert "which this machine's journal does not know" in theirs["MARI"]["pending"]
    refused = _inv_env(project, b, "reimage", "--instrument=ZOOM", "--release=2026C3.1")
    assert refused.returncode != 0 and "HF-2026C3-001" in refused.stderr, refused.stdout + refused.stderr
