"""The crash matrix (issue 13): a real `invoke` process is killed (SIGKILL, by the lab's fault hook) just
before, in the middle of, and just after every step of a reimage and of staging. Then the command that
`invoke status` advises is run, as an operator would, and the instrument must be whole (``assert_whole``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imaging.core.files import read_json
from imaging.core.hashing import tree_manifest
from imaging.model import layout
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from tests.ops.lab_processes import (
    NEW,
    OLD,
    POSITIONS,
    STAGE_STEPS,
    assert_whole,
    copy_project,
    generations,
    half_made,
    kill_fault,
    lab_ctx,
    make_bases,
    run_invoke,
)
from tests.ops.test_reimage import PLAN_LEN, user_data


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bases(tmp_path_factory)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("index", range(PLAN_LEN))
def test_reimage_killed_around_every_step_then_the_advised_command_leaves_it_whole(
        bases: dict[str, Path], tmp_path: Path, index: int, position: str) -> None:
    root = copy_project(bases["staged"], tmp_path)
    ctx = lab_ctx(root)
    actions = [s.action for s in reimaging.plan_for_reimage(ctx, "ZOOM", NEW).steps]
    assert len(actions) == PLAN_LEN
    data_before = user_data(ctx)
    [old_gen] = generations(ctx)[0]
    ctx.close()

    killed = run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}",
                        faults=kill_fault(actions, index, position))
    assert killed.returncode == -9, killed.stdout + killed.stderr  # SIGKILL: nothing ran after it

    status = run_invoke(root, "status", "--instruments=ZOOM")
    assert status.returncode == 0, status.stderr
    advised = re.findall(r"`invoke (resume|rollback) --instrument=ZOOM`", status.stdout)
    assert advised == ["resume", "rollback"], status.stdout  # the one way out, in both directions
    way = advised[(index + POSITIONS.index(position)) % 2]  # every step is left both ways across positions
    out = run_invoke(root, way, "--instrument=ZOOM")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_whole(root, NEW if way == "resume" else OLD, data_before, old_gen)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("index", range(STAGE_STEPS))
def test_staging_killed_around_every_step_then_staging_again_stages_it_whole(
        bases: dict[str, Path], tmp_path: Path, index: int, position: str) -> None:
    root = copy_project(bases["published"], tmp_path)
    killed = run_invoke(root, "stage", f"--release={NEW}", "--instruments=ZOOM",
                     faults=kill_fault(["stage_artifact"] * STAGE_STEPS, index, position))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    again = run_invoke(root, "stage", f"--release={NEW}", "--instruments=ZOOM")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stdout + again.stderr
    ctx = lab_ctx(root)
    try:
        zoom = ctx.inventory.instrument("ZOOM")
        host = ctx.inventory.host_of(zoom)
        assert staging.not_staged(ctx, NEW, zoom.host) == []
        for art in staging.artifacts_of(ctx, NEW, zoom.host):
            staged = ctx.providers.lab.path(zoom.host, layout.image_path(host, art.name, art.sha256))
            assert read_json(staged / "disk.json")["sha256"] == art.sha256  # the verified marker
            cache = ctx.paths.lab / "unpacked" / art.sha256 / "content"
            assert tree_manifest(staged / "content") == tree_manifest(cache)  # every file, every byte
        assert not [p for p in ctx.paths.lab.rglob("*") if half_made(p.name)]
    finally:
        ctx.close()
    assert run_invoke(root, "reimage", "--instrument=ZOOM", f"--release={NEW}").returncode == 0
