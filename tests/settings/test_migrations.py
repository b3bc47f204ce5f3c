"""The migration runner: chain discovery, oldest-to-newest equals a fresh render, failures, branches, rehearsal."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from settings_support import (
    GIT_ENV,
    V1_TEMPLATES,
    commit_all,
    dir_hash,
    fleet,
    git,
    init_repo,
    project_repo,
    without_provenance,
)

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.settings.migrations import (
    MigrationFailed,
    completion_record,
    discover,
    latest_version,
    migrate_branch,
    migrate_files,
    oldest_version,
    plan_migrations,
    post_boot_steps,
    read_version,
    rehearse_all,
    rehearse_branches,
    restore_branch,
    run_migrations,
)
from imaging.settings.render import VERSION_FILE, parse_version, render_settings


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)


def test_the_shipped_migrations_form_one_chain_up_to_the_templates_version() -> None:
    chain = discover()
    assert [m.from_version for m in chain] == list(range(1, len(chain) + 1))
    assert all(m.to_version == m.from_version + 1 and m.description for m in chain)
    templates_version = parse_version((V1_TEMPLATES.parent.parent.parent / "templates/settings" / VERSION_FILE)
                                      .read_bytes(), source="templates")
    assert latest_version() == templates_version
    assert oldest_version() == parse_version((V1_TEMPLATES / VERSION_FILE).read_bytes(), source="v1")
    assert [m.id for m in chain if m.post_boot] == ["m0004_database_schema_v2"]


def test_plan_migrations_gives_the_steps_between_two_versions() -> None:
    assert [m.to_version for m in plan_migrations(1, 5)] == [2, 3, 4, 5]
    assert [m.to_version for m in plan_migrations(3, 4)] == [4]
    assert plan_migrations(5, 5) == []
    with pytest.raises(InputError, match="newer than"):
        plan_migrations(4, 2)
    with pytest.raises(InputError, match="no migration path from settings version 0"):
        plan_migrations(0, 5)
    with pytest.raises(InputError, match="no migration path"):
        plan_migrations(2, 9)


def _render_fleet(repo: Path) -> dict[str, dict[str, bytes]]:
    return {name: without_provenance(render_settings(repo=repo, instrument=name, vm=vm, variables=v).files)
            for name, (vm, v) in fleet().items()}


def test_migrating_the_whole_fleet_from_the_oldest_version_equals_a_fresh_render_at_the_newest(
        tmp_path: Path) -> None:
    old = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))
    new = _render_fleet(project_repo(tmp_path))
    for name in fleet():
        assert old[name][VERSION_FILE] == f"{oldest_version()}\n".encode()
        assert old[name] != new[name]
        migrated, steps = migrate_files(old[name], latest_version())
        assert [s.to_version for s in steps] == list(range(oldest_version() + 1, latest_version() + 1))
        assert migrated == new[name], name


@pytest.mark.parametrize("old_version", [1, 3, 4])
def test_each_frozen_template_set_migrated_equals_a_render_of_the_next_set(tmp_path: Path, old_version: int) -> None:
    """The frozen sets the older releases render from (templates/settings-history/vN) are what the migrations
    expect: rendering set N and migrating gives exactly what the newer sets render, for every instrument."""
    history = V1_TEMPLATES.parent
    old = _render_fleet(project_repo(tmp_path, history / f"v{old_version}", name=f"v{old_version}"))
    for newer in range(old_version + 1, latest_version() + 1):  # the sets that exist above it
        folder = history / f"v{newer}"
        if newer != latest_version() and not folder.is_dir():
            continue
        new = _render_fleet(project_repo(tmp_path, folder, name=f"v{newer}") if newer != latest_version()
                            else project_repo(tmp_path, name="latest"))
        for name in fleet():
            assert old[name][VERSION_FILE] == f"{old_version}\n".encode()
            migrated, _ = migrate_files(old[name], newer)
            assert migrated == new[name], (name, old_version, newer)


def test_every_step_is_idempotent(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))["ZOOM"]
    gitrepo.write_dir(tree, files)
    for step in discover():
        step.migrate(tree)
        once = gitrepo.read_dir(tree)
        step.migrate(tree)
        assert gitrepo.read_dir(tree) == once, step.id


def _test_chain(folder: Path) -> None:
    """Three migrations of a toy tree; the second fails halfway the first time it runs."""
    folder.mkdir()
    (folder / "m0001_add_a.py").write_text(textwrap.dedent('''
        from pathlib import Path
        FROM_VERSION, TO_VERSION, DESCRIPTION = 1, 2, "add a.txt"
        def migrate(tree: Path) -> None:
            (tree / "a.txt").write_text("a\\n")
    '''))
    (folder / "m0002_add_b_and_c.py").write_text(textwrap.dedent('''
        from pathlib import Path
        from imaging.settings.migrations import MigrationError
        FROM_VERSION, TO_VERSION, DESCRIPTION = 2, 3, "add b.txt and c.txt"
        def migrate(tree: Path) -> None:
            (tree / "b.txt").write_text("b\\n")
            flag = Path(__file__).with_name("fail-once")
            if flag.exists():
                flag.unlink()
                raise MigrationError("the disk filled up after b.txt")
            (tree / "c.txt").write_text("c\\n")
        def check(tree: Path) -> None:
            if not (tree / "c.txt").exists():
                raise MigrationError("c.txt missing")
    '''))
    (folder / "m0003_add_d.py").write_text(textwrap.dedent('''
        from pathlib import Path
        FROM_VERSION, TO_VERSION, DESCRIPTION = 3, 4, "add d.txt"
        def migrate(tree: Path) -> None:
            (tree / "d.txt").write_text("d\\n")
    '''))
    (folder / "fail-once").write_text("")


def test_a_step_failing_halfway_leaves_the_last_good_version_and_a_rerun_completes(tmp_path: Path) -> None:
    _test_chain(tmp_path / "chain")
    chain = discover(tmp_path / "chain")
    tree = tmp_path / "tree"
    gitrepo.write_dir(tree, {VERSION_FILE: b"1\n"})
    with pytest.raises(MigrationFailed) as err:
        run_migrations(tree, 4, migrations=chain)
    assert err.value.version == 2 and err.value.done == ["m0001_add_a"]
    assert "m0002_add_b_and_c" in str(err.value) and "disk filled up" in str(err.value)
    assert read_version(tree) == 2  # recorded only after a step succeeded
    steps = run_migrations(tree, 4, migrations=chain)
    assert [s.id for s in steps] == ["m0002_add_b_and_c", "m0003_add_d"]
    assert gitrepo.read_dir(tree) == {VERSION_FILE: b"4\n", "a.txt": b"a\n", "b.txt": b"b\n", "c.txt": b"c\n",
                                      "d.txt": b"d\n"}


def settings_repo(tmp_path: Path, branches: dict[str, dict[str, bytes]]) -> Path:
    repo = init_repo(tmp_path / "settings-repo")
    (repo / "README.md").write_text("one branch per instrument VM\n")
    commit_all(repo, "root")
    for branch, files in branches.items():
        gitrepo.commit_files(repo, branch, files, f"{branch}: initial settings", replace=True)
    return repo


def log(repo: Path, branch: str) -> list[str]:
    return git(repo, "log", "--format=%s", branch).splitlines()


def test_a_branch_gets_one_commit_per_step_and_a_failed_step_commits_nothing(tmp_path: Path) -> None:
    _test_chain(tmp_path / "chain")
    chain = discover(tmp_path / "chain")
    repo = settings_repo(tmp_path, {"NDXTEST": {VERSION_FILE: b"1\n"}})
    with pytest.raises(MigrationFailed):
        migrate_branch(repo, "NDXTEST", 4, migrations=chain)
    assert log(repo, "NDXTEST") == ["Settings migration m0001_add_a: v1 -> v2", "NDXTEST: initial settings"]
    assert gitrepo.read_tree(repo, "NDXTEST") == {VERSION_FILE: b"2\n", "a.txt": b"a\n"}
    result = migrate_branch(repo, "NDXTEST", 4, migrations=chain)
    assert result.from_version == 2 and result.to_version == 4
    assert log(repo, "NDXTEST")[:2] == ["Settings migration m0003_add_d: v3 -> v4",
                                        "Settings migration m0002_add_b_and_c: v2 -> v3"]
    assert result.after_commit == git(repo, "rev-parse", "NDXTEST").strip()
    assert git(repo, "status", "--porcelain") == "" and git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main\n"


def test_dry_run_shows_the_diff_and_changes_nothing(tmp_path: Path) -> None:
    old = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))["ZOOM"]
    repo = settings_repo(tmp_path, {"NDXZOOM": old})
    before = dir_hash(repo)
    result = migrate_branch(repo, "NDXZOOM", latest_version(), dry_run=True)
    assert dir_hash(repo) == before
    assert result.after_commit is None and len(result.steps) == 4
    assert '-      <macro name="GALILADDR"' in result.diff and '+      <macro name="MOTOR_HOST"' in result.diff
    assert "+++ b/labview/dae.ini" in result.diff and "+++ /dev/null" in result.diff
    assert '+  "schema_version": 2,' in result.diff


def test_rollback_restores_the_branch_as_it_was_before_the_migrations(tmp_path: Path) -> None:
    old = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))["ZOOM"]
    repo = settings_repo(tmp_path, {"NDXZOOM": old})
    result = migrate_branch(repo, "NDXZOOM", latest_version())
    assert read_version_of(repo, "NDXZOOM") == latest_version()
    restore_branch(repo, "NDXZOOM", result.before_commit)
    assert gitrepo.read_tree(repo, "NDXZOOM") == old
    assert len(log(repo, "NDXZOOM")) == 1 + 4 + 1  # initial, four steps, the restore: history is kept


def read_version_of(repo: Path, branch: str) -> int:
    return parse_version(gitrepo.read_tree(repo, branch)[VERSION_FILE], source=branch)


def test_a_real_migration_refuses_a_bad_value_and_names_it(tmp_path: Path) -> None:
    old = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))["ZOOM"]
    old["config/instrument.ini"] = old["config/instrument.ini"].replace(b"port = 3306", b"port = ${DB_PORT}")
    repo = settings_repo(tmp_path, {"NDXZOOM": old})
    with pytest.raises(MigrationFailed) as err:
        migrate_branch(repo, "NDXZOOM", latest_version())
    assert err.value.step.id == "m0003_database_section_to_json" and err.value.version == 3
    assert "port must be a number" in str(err.value) and "config/instrument.ini" in str(err.value)
    assert read_version_of(repo, "NDXZOOM") == 3


def test_rehearsing_the_whole_shipped_fleet_changes_nothing_and_reports_failures(tmp_path: Path) -> None:
    old = _render_fleet(project_repo(tmp_path, V1_TEMPLATES, name="v1"))
    branches = {fleet()[name][0]: {k: v for k, v in files.items()
                                    if k.startswith(("configurations/ioc", "labview", "config", ".imaging"))}
                for name, files in old.items()}
    broken = fleet()["LOQ"][0]
    branches[broken]["config/instrument.ini"] += b"\n[Database]\nhost = db\n"  # a duplicate section
    repo = settings_repo(tmp_path, branches)
    before = dir_hash(repo)
    results = rehearse_branches(repo, list(branches) + ["NDXNOSUCH"], latest_version())
    assert dir_hash(repo) == before
    by = {r.name: r for r in results}
    assert len(by) == len(fleet()) + 1
    assert not by[broken].ok and "config/instrument.ini" in by[broken].error
    assert not by["NDXNOSUCH"].ok and "no branch NDXNOSUCH" in by["NDXNOSUCH"].error
    good = [r for r in results if r.ok]
    assert len(good) == len(fleet()) - 1
    assert all(r.from_version == 1 and r.to_version == latest_version() and len(r.steps) == 4 for r in good)
    assert all("labview/dae.ini" in r.changed_files for r in good)


def test_rehearse_all_reports_an_instrument_already_current_as_ok(tmp_path: Path) -> None:
    new = _render_fleet(project_repo(tmp_path))
    results = rehearse_all({"ZOOM": new["ZOOM"]}, latest_version())
    assert results[0].ok and results[0].steps == [] and results[0].changed_files == []


def test_post_boot_steps_come_with_their_command_and_are_skipped_once_recorded_on_var(tmp_path: Path) -> None:
    settings = _render_fleet(project_repo(tmp_path))["ZOOM"]
    steps = post_boot_steps(3, 5, settings, done=set())
    assert [s.migration for s in steps] == ["m0004_database_schema_v2"]
    cmd = steps[0].command
    assert cmd[0].endswith("mysql.exe") and "--host=isisdb2.controls.example.org" in cmd
    assert "--user=zoom_ctrl" in cmd and any(a.startswith("--execute=CREATE INDEX IF NOT EXISTS") for a in cmd)
    marker, body = completion_record(steps[0], op_id="op-1", result={"exit_code": 0})
    assert marker == "imaging/migrations/m0004_database_schema_v2.json"
    assert json.loads(body)["migration"] == "m0004_database_schema_v2"
    assert post_boot_steps(3, 5, settings, done={marker}) == []
    assert post_boot_steps(1, 4, settings, done=set()) == []


def test_a_badly_declared_migration_is_refused_with_its_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "m0001_x.py").write_text("FROM_VERSION = 1\nDESCRIPTION = 'x'\ndef migrate(tree):\n    pass\n")
    with pytest.raises(InputError, match=r"m0001_x.py: field 'TO_VERSION'"):
        discover(folder)
    (folder / "m0001_x.py").write_text("FROM_VERSION = 1\nTO_VERSION = 2\nDESCRIPTION = 'x'\n"
                                       "def migrate(tree):\n    pass\n")
    (folder / "m0002_y.py").write_text("FROM_VERSION = 3\nTO_VERSION = 4\nDESCRIPTION = 'y'\n"
                                       "def migrate(tree):\n    pass\n")
    with pytest.raises(InputError, match="do not form one chain"):
        discover(folder)


def test_a_bug_in_a_migration_is_reported_as_that_step_failing(tmp_path: Path) -> None:
    folder = tmp_path / "buggy"
    folder.mkdir()
    (folder / "m0001_buggy.py").write_text("FROM_VERSION = 1\nTO_VERSION = 2\nDESCRIPTION = 'buggy'\n"
                                           "def migrate(tree):\n    return tree.nonexistent\n")
    chain = discover(folder)
    result = rehearse_all({"ZOOM": {VERSION_FILE: b"1\n"}}, 2, migrations=chain)[0]
    assert not result.ok and "m0001_buggy" in result.error and "AttributeError" in result.error
    assert result.from_version == 1
