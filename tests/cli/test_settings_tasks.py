"""The render and migrate tasks, end to end on a private copy of the project and the whole shipped fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
from settings_support import V1_TEMPLATES, commit_all, dir_hash, fleet, git, init_repo, inv, project_repo

from imaging.core import git as gitrepo
from imaging.settings.render import render_settings


def test_render_all_check_renders_the_whole_fleet_and_writes_nothing(project: Path) -> None:
    before = dir_hash(project)
    res = inv(project, "render", "--all", "--check")
    assert res.returncode == 0, res.stderr
    assert f"{len(fleet())} rendered, 0 failed" in res.stdout
    assert dir_hash(project) == before


def test_render_writes_a_folder_for_review_and_is_deterministic(project: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        res = inv(project, "render", "--instrument=ZOOM", f"--out={tmp_path / out}")
        assert res.returncode == 0, res.stderr
    a, b = gitrepo.read_dir(tmp_path / "a" / "ZOOM"), gitrepo.read_dir(tmp_path / "b" / "ZOOM")
    assert a == b and "python/init_zoom.py" in a and ".imaging/provenance.json" in a


def test_render_refuses_a_dirty_template_unless_allowed(project: Path, tmp_path: Path) -> None:
    tpl = project / "templates" / "settings" / "globals.txt.j2"
    tpl.write_text(tpl.read_text() + "LOCAL=1\n")
    res = inv(project, "render", "--instrument=ZOOM", "--check")
    assert res.returncode == 1 and "uncommitted changes" in res.stderr and "--allow-dirty" in res.stderr
    res = inv(project, "render", "--instrument=ZOOM", "--check", "--allow-dirty")
    assert res.returncode == 0 and "DIRTY" in res.stdout


def test_render_all_check_reports_each_instrument_missing_a_variable(project: Path) -> None:
    path = project / "instruments" / "fleet" / "ZOOM.yaml"
    path.write_text(path.read_text().replace("  db_host: isisdb2.controls.example.org\n", ""))
    res = inv(project, "render", "--all", "--check")
    assert res.returncode == 1
    assert "ZOOM: FAILED" in res.stderr and "connection.json.j2:3" in res.stderr
    assert "'db_host' is undefined" in res.stderr
    assert f"{len(fleet()) - 1} rendered, 1 failed" in res.stdout


def test_migrate_needs_exactly_one_of_instrument_or_all(project: Path) -> None:
    res = inv(project, "migrate")
    assert res.returncode == 1 and "exactly one of --instrument" in res.stderr
    res = inv(project, "migrate", "--all")
    assert res.returncode == 1 and "--all is for rehearsals only" in res.stderr


@pytest.fixture
def fleet_settings_repo(project: Path, tmp_path: Path) -> Path:
    """A settings repository with one branch per shipped instrument, each holding hand-tuned v1 files."""
    v1 = project_repo(tmp_path, V1_TEMPLATES, name="v1")
    repo = init_repo(tmp_path / "settings-repo")
    (repo / "README.md").write_text("one branch per instrument\n")
    commit_all(repo, "root")
    for name, (vm, variables) in fleet().items():
        files = render_settings(repo=v1, instrument=name, vm=vm, variables=variables).files
        keep = {k: v for k, v in files.items() if k.startswith(("configurations/ioc/", "labview/", "config/"))}
        keep[".imaging/settings-version"] = b"1\n"
        gitrepo.commit_files(repo, vm, keep, f"{name}: settings as tuned on the instrument", replace=True)
    defaults = project / "instruments" / "defaults.yaml"
    defaults.write_text(defaults.read_text() + "settings_repo: ../../settings-repo\n")
    return repo


def test_migrate_all_check_rehearses_the_whole_fleet_and_changes_nothing(project: Path,
                                                                         fleet_settings_repo: Path) -> None:
    before = (dir_hash(fleet_settings_repo), dir_hash(project))
    res = inv(project, "migrate", "--all", "--check")
    assert res.returncode == 0, res.stderr
    assert f"{len(fleet())} ok, 0 would fail" in res.stdout
    assert "ZOOM (NDXZOOM): ok v1 -> v5 via m0001_rename_galil_address" in res.stdout
    assert (dir_hash(fleet_settings_repo), dir_hash(project)) == before


def test_migrate_all_check_names_the_instrument_that_would_fail(project: Path, fleet_settings_repo: Path) -> None:
    files = gitrepo.read_tree(fleet_settings_repo, "NDXLOQ")
    files["config/instrument.ini"] = files["config/instrument.ini"].replace(b"port = 3306", b"port = tbd")
    gitrepo.commit_files(fleet_settings_repo, "NDXLOQ", files, "a half-finished edit", replace=True)
    before = dir_hash(fleet_settings_repo)
    res = inv(project, "migrate", "--all", "--check")
    assert res.returncode == 1
    assert "LOQ (NDXLOQ): WOULD FAIL" in res.stderr and "m0003_database_section_to_json" in res.stderr
    assert "port must be a number" in res.stderr
    assert f"{len(fleet()) - 1} ok, 1 would fail" in res.stdout
    assert dir_hash(fleet_settings_repo) == before


def test_migrate_dry_run_then_migrate_then_restore(project: Path, fleet_settings_repo: Path) -> None:
    original = git(fleet_settings_repo, "rev-parse", "NDXZOOM").strip()
    res = inv(project, "migrate", "--instrument=ZOOM", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert '+      <macro name="MOTOR_HOST"' in res.stdout and "nothing was committed" in res.stdout
    assert git(fleet_settings_repo, "rev-parse", "NDXZOOM").strip() == original
    res = inv(project, "migrate", "--instrument=ZOOM")
    assert res.returncode == 0, res.stderr
    assert len(git(fleet_settings_repo, "log", "--format=%s", f"{original}..NDXZOOM").splitlines()) == 4
    rendered = inv(project, "render", "--instrument=ZOOM", "--check")
    assert rendered.returncode == 0, rendered.stderr  # the migrated branch now fits the v5 templates
    res = inv(project, "migrate", "--instrument=ZOOM", f"--restore={original}")
    assert res.returncode == 0, res.stderr
    assert gitrepo.read_tree(fleet_settings_repo, "NDXZOOM") == gitrepo.read_tree(fleet_settings_repo, original)


def test_settings_init_makes_the_missing_branches_and_render_check_lists_them(project: Path, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "settings-repo")
    (repo / ".imaging").mkdir()
    (repo / ".imaging" / "settings-version").write_text("5\n")
    commit_all(repo, "the common line")
    gitrepo.commit_files(repo, "NDXZOOM", {"labview/site.ini": b"[ZOOM]\n"}, "ZOOM's own", create_from="HEAD")
    defaults = project / "instruments" / "defaults.yaml"
    defaults.write_text(defaults.read_text() + "settings_repo: ../../settings-repo\n")
    res = inv(project, "render", "--all", "--check", "--allow-dirty")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "33 instrument(s) have no settings branch yet" in res.stdout and "ZOOM," not in res.stdout
    res = inv(project, "settings-init", "--instruments=WISH,ZOOM", "--dry-run")
    assert res.returncode == 0 and "would make branch NDXWISH" in res.stdout and "NDXZOOM" not in res.stdout
    assert not gitrepo.branch_exists(repo, "NDXWISH")
    res = inv(project, "settings-init", "--instruments=WISH,ZOOM")
    assert res.returncode == 0 and "WISH: branch NDXWISH made from" in res.stdout and "1 had one" in res.stdout
    assert gitrepo.branch_exists(repo, "NDXWISH")


def test_the_sample_settings_repository_rehearses_the_shipped_fleet(project: Path) -> None:
    """Issue 17: a newcomer makes the sample settings repository with one command; with it, `render --all
    --check` passes (instruments without a branch render from the common line) and `migrate --all --check`
    rehearses LET and WISH from format 3 and MARI from 4 to the current one. The same inventory gives the
    same repository."""
    res = inv(project, "settings-sample")
    assert res.returncode == 0, res.stdout + res.stderr
    repo = project / ".state" / "sample-settings-repo"
    assert gitrepo.read_tree(repo, "refs/heads/NDXLET")[".imaging/settings-version"] == b"3\n"
    assert gitrepo.read_tree(repo, "refs/heads/NDXMARI")[".imaging/settings-version"] == b"4\n"
    again = inv(project, "settings-sample", f"--dest={project / 'again'}")
    assert again.returncode == 0
    assert git(repo, "rev-parse", "NDXLET") == git(project / "again", "rev-parse", "NDXLET")  # deterministic
    assert inv(project, "settings-sample").returncode != 0  # never over an existing one
    defaults = project / "instruments" / "defaults.yaml"
    defaults.write_text(defaults.read_text() + f"settings_repo: {repo}\n")
    res = inv(project, "render", "--all", "--check", "--allow-dirty")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "29 instrument(s) have no settings branch yet" in res.stdout
    res = inv(project, "migrate", "--all", "--check")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = {ln.split(":")[0].split(" (")[0].strip(): ln for ln in res.stdout.splitlines() if "(NDX" in ln}
    assert "v3 -> v5" in lines["LET"] and "v3 -> v5" in lines["WISH"] and "v4 -> v5" in lines["MARI"], lines
