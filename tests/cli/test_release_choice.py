"""One answer to "which release should this instrument run", for every command: `render` and `stage` refuse
a revoked release and (by default) a release marked bad for the instrument, like `reimage` and `deploy`."""

from __future__ import annotations

from pathlib import Path

from imaging.state.bad_releases import BadReleases
from tests.cli.test_cli import inv


def _revoke(project: Path, release: str) -> None:
    res = inv(project, "revoke", f"--release={release}", "--reason=corrupt Apps image")
    assert res.returncode == 0, res.stderr


def test_stage_refuses_a_revoked_release_and_copies_nothing(project: Path) -> None:
    _revoke(project, "2026C3.0")
    res = inv(project, "stage", "--release=2026C3.0", "--group=B")
    assert res.returncode == 1
    assert "revoked" in res.stderr and "Traceback" not in res.stderr
    assert not (project / ".state" / "lab").exists()  # nothing was published or staged


def test_stage_refuses_a_label_that_points_to_a_revoked_release(project: Path) -> None:
    _revoke(project, "2026C3.0")  # group B's current
    res = inv(project, "stage", "--release=current", "--group=B")
    assert res.returncode == 1 and "revoked" in res.stderr


def test_render_refuses_an_instrument_whose_release_is_revoked(project: Path) -> None:
    _revoke(project, "2026C3.0")  # ZOOM is in group B, whose current label points there
    res = inv(project, "render", "--instrument=ZOOM", "--check")
    assert res.returncode == 1
    assert "revoked" in res.stderr and "2026C3.0" in res.stderr
    assert inv(project, "render", "--instrument=ZOOM", "--check", "--release=2026C3.1").returncode == 0


def test_render_refuses_a_release_marked_bad_for_the_instrument_unless_named(project: Path) -> None:
    BadReleases(project / ".state" / "bad-releases.json").mark("ZOOM", "2026C3.0", op_id="op1",
                                                                reason="rolled back by a test")
    res = inv(project, "render", "--instrument=ZOOM", "--check")
    assert res.returncode == 1 and "marked bad for ZOOM" in res.stderr
    named = inv(project, "render", "--instrument=ZOOM", "--check", "--release=2026C3.0")
    assert named.returncode == 0, named.stderr
    assert inv(project, "render", "--instrument=WISH", "--check").returncode == 0  # other instruments are not
