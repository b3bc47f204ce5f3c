"""The full-disk matrix (issue 13): the host's storage is a small file system of its own (tmpfs), filled to
the last block just before each step of a reimage in turn. The reimage must end with a clear message (the
path, the free space, the fix; never a traceback), and once space is freed the way out it names must work:
the instrument is whole on its previous release, then the reimage succeeds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imaging.ops import reimage as reimaging
from imaging.providers.lab.faults import FILLER, fill
from tests.ops.lab_processes import (
    NEW,
    OLD,
    assert_whole,
    generations,
    lab_ctx,
    link_big,
    make_bases,
    run_invoke,
)
from tests.ops.test_reimage import PLAN_LEN, user_data

SMALL = "160m"  # the staged images and ZOOM's disks take about 60 MB; each step then fills the rest


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bases(tmp_path_factory)


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[None]:
    """A small file system of its own at ``folder`` (root is needed: under CI a failed mount fails the test,
    elsewhere it is skipped), unmounted afterwards."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs (root is needed): {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def small_reserve(root: Path) -> None:
    """A small drive keeps a small reserve (hosts.yaml: reserve_gb for HVHOST04)."""
    hosts = root / "instruments" / "hosts.yaml"
    hosts.write_text(hosts.read_text().replace("  HVHOST04:\n", "  HVHOST04:\n    reserve_gb: 0.01\n", 1))


@pytest.fixture
def small_drive(bases: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    """A copy of the staged project whose host drive (HVHOST04's E:) is a tmpfs of its own."""
    root = tmp_path / "project"
    drive = Path(".state", "lab", "hosts", "HVHOST04", "E")
    shutil.copytree(bases["staged"], root, symlinks=True, copy_function=link_big,
                    ignore=lambda folder, names: ["E"] if Path(folder) == bases["staged"] / drive.parent else [])
    (root / drive).mkdir()
    with tmpfs(root / drive, SMALL):
        shutil.copytree(bases["staged"] / drive, root / drive, symlinks=True, dirs_exist_ok=True)
        small_reserve(root)
        yield root


@pytest.mark.parametrize("index", range(PLAN_LEN))
def test_a_full_host_disk_at_every_step_gives_a_clear_message_and_a_way_out(small_drive: Path, index: int) -> None:
    root = small_drive
    ctx = lab_ctx(root)
    actions = [s.action for s in reimaging.plan_for_reimage(ctx, "ZOOM", NEW).steps]
    data_before = user_data(ctx)
    [old_gen] = generations(ctx)[0]
    ctx.close()
    action = actions[index]
    spec = f"*:{action}#{actions[: index + 1].count(action)}@fill"

    full = run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}", faults=spec)
    said = full.stdout + full.stderr
    assert "Traceback" not in said, said
    filler = root / ".state" / "lab" / "hosts" / "HVHOST04" / "E" / FILLER
    assert filler.exists()
    if full.returncode == 0:  # the step and all after it needed no new space (a look, a rename, a start)
        assert "done" in full.stdout or "ok" in full.stdout, said
        filler.unlink()
        expected = NEW
    else:
        # the path, the free space there and the fix: from the step (the disk filled) or preflight (no room)
        assert ("No space left on device" in said or "not enough space" in said) and "MiB free" in said, said
        assert "Fix:" in said and "[Errno" not in said, said
        filler.unlink()  # the operator frees space
        status = run_invoke(root, "status", "--instruments=ZOOM")
        assert status.returncode == 0, status.stderr
        if "finish it with" in status.stdout:  # the undo needed space too: the one way out is named
            assert "invoke rollback --instrument=ZOOM" in status.stdout, status.stdout
            out = run_invoke(root, "rollback", "--instrument=ZOOM")
            assert out.returncode == 0, out.stdout + out.stderr
        else:
            assert "restored to its state before the operation" in said, said
        expected = OLD
    assert_whole(root, expected, data_before, old_gen)
    if expected == OLD:
        again = run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}")
        assert again.returncode == 0, again.stdout + again.stderr


def test_a_full_disk_under_the_state_folder_is_named_with_its_fix(bases: dict[str, Path], tmp_path: Path) -> None:
    """The state folder's own disk (the journal's, the lab's) full: the command says where and what to do,
    and after freeing space the same command works."""
    root = tmp_path / "project"
    shutil.copytree(bases["staged"], root, symlinks=True, copy_function=link_big,
                    ignore=lambda folder, names: [".state"] if Path(folder) == bases["staged"] else [])
    state = tmp_path / "state"
    state.mkdir()
    small_reserve(root)
    with tmpfs(state, "256m"):
        shutil.copytree(bases["staged"] / ".state", state, symlinks=True, dirs_exist_ok=True)
        assert fill(tmp_path) == [state]  # the lab's own filler: only a folder that is a file system of its own
        env = {"IMAGING_STATE": str(state)}
        out = run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}", env=env)
        said = out.stdout + out.stderr
        assert out.returncode != 0 and "Traceback" not in said, said
        assert "No space left on device" in said and "MiB free there" in said and "Fix:" in said, said
        (state / FILLER).unlink()
        status = run_invoke(root, "status", "--instruments=ZOOM", env=env)
        way = re.search(r"`invoke (rollback|resume) --instrument=ZOOM`", status.stdout)
        if way:  # the journal recorded a start before the disk filled: finish or undo it first
            assert run_invoke(root, way.group(1), "--instrument=ZOOM", env=env).returncode == 0
        again = run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
