"""Drift: changes made on an instrument's Settings volume are found, shown as a diff, and never lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from settings_support import GIT_ENV, commit_all, fleet, git, init_repo, project_repo, without_provenance

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.settings.drift import (
    DriftFound,
    capture_drift,
    capture_to_branch,
    detect_drift,
    drift_files_for_var,
    drift_stamp,
)
from imaging.settings.render import MANIFEST_FILE, PROVENANCE_FILE, render_settings, rerender_from_provenance


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)


VM, VARS = fleet()["ZOOM"]
INI = "labview/sample_environment.ini"


def deploy(volume: Path, files: dict[str, bytes]) -> None:
    """Write a Settings volume the way the provider's write_settings does: the files and their manifest."""
    gitrepo.write_dir(volume, files)
    expected = {rel: sha256_bytes(d) for rel, d in files.items()}
    (volume / MANIFEST_FILE).write_text(json.dumps({"files": expected, "digest": manifest_digest(expected)}))


def read_volume(volume: Path) -> tuple[dict, dict[str, bytes]]:
    files = gitrepo.read_dir(volume)
    return json.loads(files[MANIFEST_FILE]), files


def test_an_untouched_volume_has_no_drift(tmp_path: Path) -> None:
    r = render_settings(repo=project_repo(tmp_path), instrument="ZOOM", vm=VM, variables=VARS)
    deploy(tmp_path / "vol", r.files)
    manifest, current = read_volume(tmp_path / "vol")
    report = detect_drift(manifest, current)
    assert report.clean and report.files == [] and "no drift" in report.summary()


def test_a_changed_file_blocks_with_a_unified_diff(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    r = render_settings(repo=repo, instrument="ZOOM", vm=VM, variables=VARS)
    vol = tmp_path / "vol"
    deploy(vol, r.files)
    (vol / INI).write_text((vol / INI).read_text().replace("Poll Interval ms = 1000", "Poll Interval ms = 250"))
    (vol / "labview/local_notes.txt").write_text("tuned by the instrument scientist\n")
    (vol / "globals.txt").unlink()
    manifest, current = read_volume(vol)
    deployed = rerender_from_provenance(repo, json.loads(current[PROVENANCE_FILE]))
    report = detect_drift(manifest, current, deployed_files=deployed)
    assert [f.path for f in report.changed] == [INI]
    assert [f.path for f in report.added] == ["labview/local_notes.txt"]
    assert [f.path for f in report.removed] == ["globals.txt"]
    diff = report.changed[0].diff
    assert f"--- a/{INI}\n+++ b/{INI}\n" in diff
    assert "-Poll Interval ms = 1000\n+Poll Interval ms = 250\n" in diff
    assert "-INSTRUMENT=ZOOM" in report.removed[0].diff
    err = DriftFound("ZOOM", report)
    assert "+Poll Interval ms = 250" in str(err) and "--capture-drift" in str(err) and "Nothing was changed" in str(err)


def test_without_the_deployed_content_the_diff_still_names_hashes_and_shows_the_new_text(tmp_path: Path) -> None:
    manifest = {"files": {"a.ini": sha256_bytes(b"[A]\nx = 1\n")}}
    report = detect_drift(manifest, {"a.ini": b"[A]\nx = 2\n"})
    assert report.changed[0].deployed_sha256 == manifest["files"]["a.ini"]
    assert "content not available" in report.changed[0].diff and "+x = 2" in report.changed[0].diff
    # deployed content that does not match the manifest is never used for a diff
    forged = detect_drift(manifest, {"a.ini": b"[A]\nx = 2\n"}, deployed_files={"a.ini": b"[A]\nx = 9\n"})
    assert "content not available" in forged.changed[0].diff


def test_binary_files_are_reported_without_a_text_diff() -> None:
    manifest = {"files": {"cal.bin": sha256_bytes(b"\0\1\2")}}
    report = detect_drift(manifest, {"cal.bin": b"\0\1\3"}, deployed_files={"cal.bin": b"\0\1\2"})
    assert report.changed[0].diff.startswith("Binary file cal.bin differs")


def test_a_damaged_manifest_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="manifest has no file list"):
        detect_drift({"files": ["a"]}, {})


def settings_repo(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "settings-repo")
    (repo / "README.md").write_text("one branch per instrument\n")
    commit_all(repo, "root")
    return repo


def test_capture_drift_commits_to_the_branch_and_the_next_render_keeps_the_change(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    srepo = settings_repo(tmp_path)
    gitrepo.commit_files(srepo, VM, {".imaging/settings-version": b"5\n"}, "ZOOM branch", replace=True)
    r = render_settings(repo=repo, instrument="ZOOM", vm=VM, variables=VARS, settings_repo=srepo)
    vol = tmp_path / "vol"
    deploy(vol, r.files)
    (vol / INI).write_text("[Sample Environment]\nDevice = \"replacement cryostat\"\n")
    (vol / "globals.txt").unlink()
    manifest, current = read_volume(vol)
    report = detect_drift(manifest, current)
    main_before = git(srepo, "rev-parse", "main")
    captured = capture_drift(report, current, instrument="ZOOM", vm=VM, settings_repo=srepo, deployed_version=5,
                             stamp="20261121T190000Z")
    assert captured.var_files == {} and captured.commit == git(srepo, "rev-parse", VM).strip()
    assert git(srepo, "rev-parse", "main") == main_before
    assert git(srepo, "status", "--porcelain") == ""  # the user's checkout (main) is untouched
    branch = gitrepo.read_tree(srepo, VM)
    assert branch[INI] == current[INI]
    assert b"globals.txt" in branch[".imaging/remove.txt"]
    message = git(srepo, "log", "-1", "--format=%B", VM)
    assert "Capture settings drift found on ZOOM" in message and f"changed: {INI}" in message
    again = render_settings(repo=repo, instrument="ZOOM", vm=VM, variables=VARS, settings_repo=srepo)
    assert without_provenance(again.files) == without_provenance(
        {k: v for k, v in current.items() if k != MANIFEST_FILE})


def test_capture_creates_a_missing_branch_at_the_deployed_version(tmp_path: Path) -> None:
    srepo = settings_repo(tmp_path)
    report = detect_drift({"files": {"a.txt": sha256_bytes(b"a\n")}}, {"a.txt": b"b\n"})
    capture_to_branch(srepo, "NDXNEW", report, {"a.txt": b"b\n"}, instrument="NEW", deployed_version=4, stamp="s1")
    assert gitrepo.read_tree(srepo, "NDXNEW") == {".imaging/settings-version": b"4\n", "a.txt": b"b\n"}


def test_capture_refuses_a_branch_already_migrated_past_the_instrument(tmp_path: Path) -> None:
    srepo = settings_repo(tmp_path)
    gitrepo.commit_files(srepo, VM, {".imaging/settings-version": b"5\n"}, "at 5", replace=True)
    report = detect_drift({"files": {"a.txt": sha256_bytes(b"a\n")}}, {"a.txt": b"b\n"})
    before = git(srepo, "rev-parse", VM)
    with pytest.raises(InputError, match="branch NDXZOOM is at settings version 5 but the instrument runs version 4"):
        capture_to_branch(srepo, VM, report, {"a.txt": b"b\n"}, instrument="ZOOM", deployed_version=4, stamp="s")
    assert git(srepo, "rev-parse", VM) == before


def test_capture_refuses_a_branch_checked_out_by_someone(tmp_path: Path) -> None:
    srepo = settings_repo(tmp_path)
    gitrepo.commit_files(srepo, VM, {".imaging/settings-version": b"5\n"}, "at 5", replace=True)
    git(srepo, "checkout", "-q", VM)
    report = detect_drift({"files": {}}, {"a.txt": b"b\n"})
    with pytest.raises(InputError, match="checked out"):
        capture_to_branch(srepo, VM, report, {"a.txt": b"b\n"}, instrument="ZOOM", deployed_version=5, stamp="s")


def test_without_a_settings_repository_drift_is_laid_out_for_var(tmp_path: Path) -> None:
    manifest = {"files": {"a/x.ini": sha256_bytes(b"x = 1\n"), "gone.txt": sha256_bytes(b"g\n")}}
    current = {"a/x.ini": b"x = 2\n", "new.txt": b"n\n"}
    report = detect_drift(manifest, current)
    stamp = drift_stamp(datetime(2026, 11, 21, 19, 30, tzinfo=UTC))
    assert stamp == "20261121T193000Z"
    captured = capture_drift(report, current, instrument="ZOOM", vm=VM, settings_repo=None, deployed_version=5,
                             stamp=stamp)
    assert captured.commit is None
    files = captured.var_files
    base = "settings-drift/20261121T193000Z"
    assert files[f"{base}/files/a/x.ini"] == b"x = 2\n" and files[f"{base}/files/new.txt"] == b"n\n"
    summary = json.loads(files[f"{base}/drift.json"])
    assert [f["path"] for f in summary["removed"]] == ["gone.txt"] and summary["instrument"] == "ZOOM"
    assert b"+x = 2" in files[f"{base}/drift.diff"]
    assert drift_files_for_var(report, current, instrument="ZOOM", stamp=stamp) == files
    with pytest.raises(InputError):
        drift_files_for_var(report, current, instrument="ZOOM", stamp="../escape")
