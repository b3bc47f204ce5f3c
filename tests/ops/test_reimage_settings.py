"""The settings half of a reimage: drift blocks it, --capture-drift keeps the change, migrations run first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from settings_support import GIT_ENV, ROOT, V1_TEMPLATES, commit_all, fleet, git, init_repo, project_repo

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.model.inventory import load_inventory
from imaging.settings.drift import DriftFound
from imaging.settings.instruments import DeployedSettings, prepare_reimage_settings, rollback_settings
from imaging.settings.render import render_settings

INI = "labview/sample_environment.ini"


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)


def inventory(settings_repo: Path | None = None):  # noqa: ANN201
    inv = load_inventory(ROOT / "instruments")
    return inv.model_copy(update={"settings_repo": settings_repo})


def volume(files: dict[str, bytes]) -> DeployedSettings:
    """A Settings volume as the provider wrote it: the files plus the manifest of what it wrote."""
    shas = {rel: sha256_bytes(d) for rel, d in files.items()}
    manifest = {"files": shas, "digest": manifest_digest(shas)}
    return DeployedSettings(manifest=manifest, files={**files, ".imaging/manifest.json": json.dumps(manifest).encode()})


def edited(v: DeployedSettings, rel: str, data: bytes) -> DeployedSettings:
    return DeployedSettings(manifest=v.manifest, files={**v.files, rel: data})


def test_an_edit_on_the_volume_blocks_the_reimage_and_capture_keeps_it_on_var(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    inv = inventory()
    zoom = inv.instrument("ZOOM")
    vm, variables = fleet()["ZOOM"]
    deployed = volume(render_settings(repo=repo, instrument="ZOOM", vm=vm, variables=variables).files)
    changed = edited(deployed, INI, deployed.files[INI].replace(b"1000", b"200"))
    with pytest.raises(DriftFound) as err:
        prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                 deployed=changed)
    assert "-Poll Interval ms = 1000\n+Poll Interval ms = 200" in str(err.value)  # a real diff (re-rendered)
    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=changed, capture=True, stamp="20261121T200000Z")
    assert out.captured is not None and out.captured.commit is None
    assert out.captured.var_files[f"settings-drift/20261121T200000Z/files/{INI}"] == changed.files[INI]
    assert out.rendered.files[INI] == deployed.files[INI]  # the new settings come from git again
    clean = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                     deployed=deployed)
    assert clean.drift is not None and clean.drift.clean and clean.post_boot == []


def branch_repo(tmp_path: Path, branches: dict[str, dict[str, bytes]]) -> Path:
    srepo = init_repo(tmp_path / "settings-repo")
    (srepo / "README.md").write_text("one branch per instrument\n")
    commit_all(srepo, "root")
    for b, files in branches.items():
        gitrepo.commit_files(srepo, b, files, f"{b} initial", replace=True)
    return srepo


def test_with_a_settings_repository_the_captured_change_is_in_the_branch_and_in_the_new_settings(
        tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    vm, variables = fleet()["ZOOM"]
    srepo = branch_repo(tmp_path, {vm: {".imaging/settings-version": b"5\n"}})
    inv = inventory(srepo)
    zoom = inv.instrument("ZOOM")
    deployed = volume(render_settings(repo=repo, instrument="ZOOM", vm=vm, variables=variables,
                                      settings_repo=srepo).files)
    changed = edited(deployed, INI, b'[Sample Environment]\nDevice = "spare cryostat"\n')
    with pytest.raises(DriftFound):
        prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                 deployed=changed)
    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=changed, capture=True, stamp="s1")
    assert out.captured.commit == git(srepo, "rev-parse", vm).strip()
    assert gitrepo.read_tree(srepo, vm)[INI] == changed.files[INI]
    assert out.rendered.files[INI] == changed.files[INI]
    assert out.migration is not None and out.migration.steps == []


def test_pending_migrations_run_before_rendering_and_can_be_rolled_back(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    vm, variables = fleet()["ZOOM"]
    v1 = render_settings(repo=project_repo(tmp_path, V1_TEMPLATES, name="v1"), instrument="ZOOM", vm=vm,
                         variables=variables).files
    tuned = {"configurations/ioc/motors.xml": v1["configurations/ioc/motors.xml"].replace(
        b"zoom-mc01.controls", b"zoom-mc01-spare.controls"), ".imaging/settings-version": b"1\n"}
    srepo = branch_repo(tmp_path, {vm: tuned})
    inv = inventory(srepo)
    zoom = inv.instrument("ZOOM")
    original = git(srepo, "rev-parse", vm).strip()

    dry = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=None, dry_run=True)
    assert git(srepo, "rev-parse", vm).strip() == original and len(dry.migration.steps) == 4
    assert b'name="MOTOR_HOST" value="zoom-mc01-spare.controls' in dry.rendered.files["configurations/ioc/motors.xml"]
    assert dry.rendered.dirty  # held in memory only

    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=None)
    assert out.migration.before_commit == original and len(out.migration.steps) == 4
    assert not out.rendered.dirty and out.rendered.files == {**dry.rendered.files,
                                                              ".imaging/provenance.json": out.rendered.files[
                                                                  ".imaging/provenance.json"]}
    assert rollback_settings(inv, zoom, out.migration.before_commit) is not None
    assert gitrepo.read_tree(srepo, vm) == tuned
    assert rollback_settings(inv, zoom, out.migration.before_commit) is None  # already there


def test_a_database_schema_step_is_handed_to_the_provider_after_boot(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    inv = inventory()
    zoom = inv.instrument("ZOOM")
    vm, variables = fleet()["ZOOM"]
    old = render_settings(repo=repo, instrument="ZOOM", vm=vm, variables=variables).files
    v4 = {k: v for k, v in old.items() if k != ".imaging/provenance.json"}
    v4[".imaging/settings-version"] = b"4\n"
    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=volume(v4))
    assert [s.migration for s in out.post_boot] == ["m0004_database_schema_v2"]
    assert out.deployed_version == 4 and out.target_version == 5
    done = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                    deployed=volume(v4), post_boot_done=[out.post_boot[0].marker])
    assert done.post_boot == []


def test_a_release_needing_another_settings_version_than_the_templates_is_refused(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    inv = inventory()
    with pytest.raises(InputError, match="needs settings version 4, but the templates in templates/settings at HEAD "
                                         "are at version 5"):
        prepare_reimage_settings(repo=repo, inventory=inv, inst=inv.instrument("ZOOM"), release="2026C3.0",
                                 settings_version=4, deployed=None)


def test_an_instrument_without_a_branch_gets_one_from_the_common_line(tmp_path: Path) -> None:
    """Issue 17: with settings_repo set, an instrument without a branch is not refused ("no commit named
    refs/heads/NDXZOOM"): its first render for a deploy makes the branch from the common line with a
    commit that says so; a dry run and `render --all --check` render from the common line, naming it."""
    from imaging.settings import branches
    from imaging.settings.instruments import render_many

    repo = project_repo(tmp_path)
    srepo = init_repo(tmp_path / "settings-repo")
    (srepo / ".imaging").mkdir()
    (srepo / ".imaging" / "settings-version").write_text("5\n")
    (srepo / "common.ini").write_text("[Facility]\nSite = ISIS\n")
    commit_all(srepo, "the common line")
    main = git(srepo, "rev-parse", "HEAD").strip()
    inv = inventory(srepo)
    zoom = inv.instrument("ZOOM")
    dry = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=None, dry_run=True)
    assert dry.rendered.files["common.ini"] == b"[Facility]\nSite = ISIS\n"
    assert not gitrepo.branch_exists(srepo, "NDXZOOM")  # a dry run makes nothing
    [listed] = render_many(repo, inv, [zoom], {"ZOOM": "2026C3.0"})
    assert listed.error is None and listed.no_branch
    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=None)
    assert out.created is not None and out.created.common in ("main", "master")
    assert git(srepo, "rev-parse", "NDXZOOM~1").strip() == main  # made from the common line
    assert git(srepo, "log", "-1", "--format=%s", "NDXZOOM").startswith("Create the settings branch of NDXZOOM")
    assert out.rendered.files["common.ini"] == b"[Facility]\nSite = ISIS\n"
    again = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                     deployed=None)
    assert again.created is None  # made once
    assert [i.vm for i in branches.missing(srepo, [zoom, inv.instrument("WISH")])] == ["NDXWISH"]


def test_the_common_line_is_merged_into_each_branch_and_conflicts_are_never_deployed(tmp_path: Path) -> None:
    """Issue 17, item 2: the facility's changes on the common line reach each instrument branch by a
    three-way merge at render time (committed as a merge at deploy); a file both changed differently is a
    conflict that `render --all --check` names per instrument and file, and a deploy refuses."""
    from imaging.settings.instruments import render_many

    repo = project_repo(tmp_path)
    srepo = init_repo(tmp_path / "settings-repo")
    (srepo / ".imaging").mkdir()
    (srepo / ".imaging" / "settings-version").write_text("5\n")
    (srepo / "common.ini").write_text("[Facility]\nSite = ISIS\n")
    (srepo / "shared.ini").write_text("[Shared]\nA = 1\n")
    commit_all(srepo, "the common line")
    inv = inventory(srepo)
    zoom, wish = inv.instrument("ZOOM"), inv.instrument("WISH")
    for inst, own in ((zoom, b"[Shared]\nA = 1\n"), (wish, b"[Shared]\nA = 2\n")):
        prepare_reimage_settings(repo=repo, inventory=inv, inst=inst, release="2026C3.0", settings_version=5,
                                 deployed=None)  # makes the branch from the common line
        gitrepo.commit_files(srepo, inst.vm, {f"{inst.name.lower()}.ini": b"[Own]\n", "shared.ini": own},
                             f"{inst.name}'s own settings")
    (srepo / "common.ini").write_text("[Facility]\nSite = ISIS\nNetwork = controls\n")
    (srepo / "shared.ini").write_text("[Shared]\nA = 3\n")  # WISH changed it too: a conflict for WISH only
    commit_all(srepo, "facility-wide change")
    results = {r.instrument: r for r in render_many(repo, inv, [zoom, wish], {"ZOOM": "2026C3.0",
                                                                              "WISH": "2026C3.0"})}
    assert results["ZOOM"].error is None
    assert results["ZOOM"].rendered.files["common.ini"].endswith(b"Network = controls\n")
    assert results["ZOOM"].rendered.files["shared.ini"] == b"[Shared]\nA = 3\n"  # only main changed it
    assert "conflicts in shared.ini" in results["WISH"].error and "NDXWISH" in results["WISH"].error
    before = git(srepo, "rev-parse", "NDXWISH").strip()
    with pytest.raises(InputError, match="conflicts in shared.ini"):
        prepare_reimage_settings(repo=repo, inventory=inv, inst=wish, release="2026C3.0", settings_version=5,
                                 deployed=None)
    assert git(srepo, "rev-parse", "NDXWISH").strip() == before  # nothing deployed, nothing committed
    out = prepare_reimage_settings(repo=repo, inventory=inv, inst=zoom, release="2026C3.0", settings_version=5,
                                   deployed=None)
    assert out.rendered.files["common.ini"].endswith(b"Network = controls\n")
    assert git(srepo, "log", "-1", "--format=%s", "NDXZOOM").startswith("Merge the common line")
    assert len(git(srepo, "log", "-1", "--format=%P", "NDXZOOM").split()) == 2
