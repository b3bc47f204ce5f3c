"""What the crash and full-disk matrices share: projects made once and copied per test, `invoke` run as a
real process, and the one definition of an instrument left whole (one release everywhere: the attached
Apps disk, the guest's version file, the Var record, the journal; Var and Data byte-identical; no disk of a
generation nobody keeps; no half-made file; nothing locked)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imaging.core.config import Paths
from imaging.engine.executor import is_live
from imaging.model import layout
from imaging.model.steps import Step
from imaging.ops import facts
from imaging.ops import publish as publishing
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.ops.status import fleet_status
from tests.conftest import GIT_ENV
from tests.ops.test_reimage import put_user_data, user_data

ROOT = Path(__file__).resolve().parents[2]
POSITIONS = ("before", "during", "after")
OLD, NEW = "2026C3.0", "2026C3.1"
STAGE_STEPS = 2  # stage_artifact for the OS template and for the Apps image


def lab_ctx(root: Path) -> Context:
    ctx = Context.load(Paths.from_env(root))
    ctx.sample_sizes = (60, 40)
    return ctx


def link_big(src: str, dst: str) -> None:
    """Copy a file; images (never changed in place: replaced by rename) are hard-linked to save time."""
    if os.path.getsize(src) > 1 << 20:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def make_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two projects made once: ZOOM running 2026C3.0 with its users' files and 2026C3.1 published
    ("published"), and the same with 2026C3.1 staged on ZOOM's host ("staged")."""
    env = {**GIT_ENV, "IMAGING_ROOT": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(GIT_ENV)
    try:
        root = tmp_path_factory.mktemp("crash") / "published"
        root.mkdir()
        for name in ("instruments", "releases", "templates"):
            shutil.copytree(ROOT / name, root / name)
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fixture"]):
            subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
        ctx = lab_ctx(root)
        assert reimaging.reimage(ctx, "ZOOM", OLD).ok
        put_user_data(ctx)
        ctx.providers.lab.guest_write("HVHOST04", "NDXZOOM", r"C:\Users\operator\Desktop\todo.txt", b"todo")
        publishing.publish(ctx, NEW, "HVHOST04")
        ctx.close()
        staged = root.parent / "staged"
        shutil.copytree(root, staged, symlinks=True, copy_function=link_big)
        ctx = lab_ctx(staged)
        staging.stage_for(ctx, NEW, [ctx.inventory.instrument("ZOOM")])
        ctx.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"published": root, "staged": staged}


def half_made(name: str) -> bool:
    """A file a killed write left: a .partial of a step, or the temporary of an atomic write."""
    return name.endswith(".partial") or name.startswith(".tmp-")


def copy_project(base: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(base, root, symlinks=True, copy_function=link_big)
    return root


def run_invoke(root: Path, *args: str, faults: str = "", env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("invoke")
    full = {**os.environ, **GIT_ENV, "IMAGING_ROOT": str(root), "COLUMNS": "200", "IMAGING_LAB_FAULTS": faults,
            **(env or {})}
    return subprocess.run([str(exe), "--search-root", str(ROOT), *args], env=full, capture_output=True, text=True,
                          timeout=300)


def kill_fault(actions: list[str], index: int, position: str) -> str:
    action = actions[index]
    return f"*:{action}#{actions[: index + 1].count(action)}@kill-{position}"


def generations(ctx: Context) -> tuple[set[str], set[str]]:
    """(generations of the OS/Apps/Settings disks attached to NDXZOOM, generations on the host's disk)."""
    zoom = ctx.inventory.instrument("ZOOM")
    state = ctx.providers.run(Step("get_state", zoom.host, {"vm": zoom.vm}, "look"))
    gen = re.compile(r"NDXZOOM-(?:os|apps|settings)-.+-([0-9a-f]{8})\.vhdx$")
    attached = {m.group(1) for d in state["disks"] if (m := gen.search(d["path"]))}
    folder = ctx.providers.lab.path(zoom.host, layout.disk_path(ctx.inventory.host_of(zoom), zoom, "var")).parent
    return attached, {m.group(1) for p in folder.iterdir() if (m := gen.search(p.name))}


def assert_whole(root: Path, expected: str, data_before: dict[str, str], old_gen: str) -> None:
    ctx = lab_ctx(root)
    try:
        zoom = ctx.inventory.instrument("ZOOM")
        [row] = fleet_status(ctx, ["ZOOM"])
        assert row.hint == "" and "interrupted" not in row.pending and row.power == "Running", row
        assert row.running == row.recorded == expected, row  # the journal and the instrument's own record
        op = facts.setter_op(ctx, zoom)
        check = facts.plan_step(op, "health_check")  # the check of the operation that put the disks there
        ctx.providers.run(Step("health_check", zoom.host, {**check, "expect_apps_version":
                                                           ctx.releases[expected].apps.version}, "check"))
        version = ctx.providers.lab.guest_path(zoom.host, zoom.vm, r"C:\Instrument\Apps\version.txt")
        assert version.read_text().strip() == ctx.releases[expected].apps.version
        assert user_data(ctx) == data_before  # Var and Data, byte for byte
        attached, on_disk = generations(ctx)
        assert len(attached) == 1, attached
        kept = attached | ({old_gen} if expected == NEW else set())
        assert on_disk == kept, f"orphans: {on_disk - kept}"
        assert not [p for p in ctx.paths.lab.rglob("*") if half_made(p.name)]
        host = ctx.inventory.host_of(zoom)
        assert not ctx.providers.lab.path(zoom.host, layout.lock_path(host, zoom)).exists()
        assert not is_live(ctx.paths.locks, "ZOOM")
        assert all(s.status != "running" for o in ctx.journal.operations(instrument="ZOOM")
                   for s in ctx.journal.steps(o.id))
    finally:
        ctx.close()


