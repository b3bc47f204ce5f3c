"""Rendering settings from git: determinism, refs without checkout, dirty trees, strict variables, overlays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settings_support import GIT_ENV, commit_all, fleet, git, init_repo, project_repo, without_provenance

from imaging.core.errors import InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.settings.migrations import check_tree
from imaging.settings.render import PROVENANCE_FILE, VERSION_FILE, render_settings, rerender_from_provenance


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)


ZOOM_VM, ZOOM_VARS = fleet()["ZOOM"]


def render(repo: Path, **kw):  # noqa: ANN201
    args = {"repo": repo, "instrument": "ZOOM", "vm": ZOOM_VM, "variables": ZOOM_VARS}
    return render_settings(**{**args, **kw})


def test_two_renders_of_the_same_ref_are_byte_identical(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    first, second = render(repo), render(repo)
    assert first.files == second.files
    assert first.sha256 == second.sha256
    assert first.sha256 == manifest_digest({k: sha256_bytes(v) for k, v in first.files.items()})
    # a second clone of the same commit gives the same bytes too, apart from the repository's name
    other = project_repo(tmp_path, name="clone")
    assert without_provenance(render(other).files) == without_provenance(first.files)


def test_a_ref_is_read_without_checking_it_out(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    git(repo, "tag", "settings-a")
    before = render(repo, ref="settings-a")
    tpl = repo / "templates" / "settings" / "globals.txt.j2"
    tpl.write_text(tpl.read_text() + "EXTRA=1\n")
    commit_all(repo, "add EXTRA")
    head = render(repo)
    assert b"EXTRA=1" in head.files["globals.txt"]
    again = render(repo, ref="settings-a")
    assert again.files == before.files
    assert again.provenance["ref"] == "settings-a"
    assert git(repo, "status", "--porcelain") == ""  # the checkout was never touched


def test_provenance_names_repo_ref_commit_templates_and_file_hashes(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    r = render(repo)
    prov = json.loads(r.files[PROVENANCE_FILE])
    assert prov == r.provenance
    assert prov["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert prov["ref"] == "HEAD" and prov["repo"] == str(repo.resolve())
    assert prov["dirty"] is False and r.dirty is False
    assert prov["templates"]["globals.txt.j2"] == sha256_bytes(
        (repo / "templates/settings/globals.txt.j2").read_bytes())
    assert prov["files"] == {k: sha256_bytes(v) for k, v in r.files.items() if k != PROVENANCE_FILE}
    assert r.version == 5 and r.files[VERSION_FILE] == b"5\n"
    assert "python/init_zoom.py" in r.files  # the {instrument} placeholder in a template's path


def test_a_dirty_tree_is_refused_without_allow_dirty(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    tpl = repo / "templates" / "settings" / "globals.txt.j2"
    tpl.write_text(tpl.read_text() + "UNCOMMITTED=1\n")
    with pytest.raises(InputError, match=r"uncommitted changes: templates/settings/globals.txt.j2.*--allow-dirty"):
        render(repo)
    r = render(repo, allow_dirty=True)
    assert r.dirty is True and r.provenance["dirty"] is True
    assert r.provenance["dirty_paths"] == ["templates/settings/globals.txt.j2"]
    assert b"UNCOMMITTED=1" in r.files["globals.txt"]


def test_an_untracked_template_makes_the_tree_dirty_but_other_folders_do_not(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    (repo / "notes.txt").write_text("not settings\n")
    assert render(repo).dirty is False
    (repo / "templates" / "settings" / "new.ini.j2").write_text("[A]\nb = 1\n")
    with pytest.raises(InputError, match="new.ini.j2"):
        render(repo)


def test_dirty_changes_do_not_matter_when_rendering_another_commit(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    first = git(repo, "rev-parse", "HEAD").strip()
    commit_all(repo, "empty")
    (repo / "templates" / "settings" / "globals.txt.j2").write_text("changed\n")
    r = render(repo, ref=first)
    assert r.dirty is False and b"changed" not in r.files["globals.txt"]


def test_a_missing_variable_names_template_line_and_instrument(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    variables = {k: v for k, v in ZOOM_VARS.items() if k != "sample_environment"}
    with pytest.raises(InputError) as err:
        render(repo, variables=variables)
    msg = str(err.value)
    template = "templates/settings/configurations/ioc/sample_environment.xml.j2"
    lines = (repo / template).read_text().splitlines()
    first_use = next(i for i, line in enumerate(lines, 1) if "sample_environment |" in line)
    assert f"{template}:{first_use}" in msg
    assert "'sample_environment' is undefined" in msg and "instrument ZOOM" in msg
    assert "instruments/fleet/ZOOM.yaml" in msg and err.value.field == "variables.sample_environment"


def test_a_missing_variable_in_a_plain_expression_names_its_line(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    (repo / "templates/settings/extra.txt.j2").write_text("A={{ instrument }}\n\nB={{ beamline }}\n")
    commit_all(repo)
    with pytest.raises(InputError, match=r"templates/settings/extra.txt.j2:3: .*'beamline' is undefined.*ZOOM"):
        render(repo)


def test_a_template_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    (repo / "templates/settings/broken.txt.j2").write_text("ok\n{% if instrument %}\nno endif\n")
    commit_all(repo)
    with pytest.raises(InputError, match=r"templates/settings/broken.txt.j2:\d+: template syntax error"):
        render(repo)


def test_partials_are_included_but_not_rendered_alone(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    (repo / "templates/settings/_partials").mkdir()
    (repo / "templates/settings/_partials/head.j2").write_text("# {{ instrument }} header\n")
    (repo / "templates/settings/with_head.txt.j2").write_text('{% include "_partials/head.j2" %}body\n')
    commit_all(repo)
    r = render(repo)
    assert r.files["with_head.txt"] == b"# ZOOM header\nbody\n"
    assert not any(k.startswith("_partials") for k in r.files)


def test_a_missing_version_file_is_refused(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    git(repo, "rm", "-q", "templates/settings/.imaging/settings-version")
    commit_all(repo)
    with pytest.raises(InputError, match="settings-version is missing"):
        render(repo)


def test_the_whole_shipped_fleet_renders_to_well_formed_files(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    digests = set()
    for name, (vm, variables) in fleet().items():
        r = render_settings(repo=repo, instrument=name, vm=vm, variables=variables)
        out = tmp_path / "out" / name
        for rel, data in r.files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        check_tree(out)  # every XML, JSON, ini and Python file parses
        compile(r.files[f"python/init_{name.lower()}.py"], "init", "exec")
        digests.add(r.sha256)
    assert len(digests) == len(fleet())  # every instrument gets its own settings


def test_values_are_escaped_for_the_file_format_they_land_in(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    variables = {**ZOOM_VARS, "sample_environment": 'dilution "fridge" <3He> & \'co\''}
    r = render(repo, variables=variables)
    import ast
    import xml.etree.ElementTree as ET

    root = ET.fromstring(r.files["configurations/ioc/sample_environment.xml"])
    assert root.find(".//macro[@name='DEVICE']").get("value") == variables["sample_environment"]
    tree = ast.parse(r.files["python/init_zoom.py"])
    consts = {n.targets[0].id: n.value.value for n in tree.body if isinstance(n, ast.Assign)}
    assert consts["SAMPLE_ENVIRONMENT"] == variables["sample_environment"]


def settings_repo_with_branch(tmp_path: Path, files: dict[str, bytes], branch: str = ZOOM_VM) -> Path:
    srepo = init_repo(tmp_path / "settings-repo")
    (srepo / "README.md").write_text("settings repository: one branch per instrument VM\n")
    commit_all(srepo, "root")
    git(srepo, "checkout", "-q", "-b", branch)
    for rel, data in files.items():
        (srepo / rel).parent.mkdir(parents=True, exist_ok=True)
        (srepo / rel).write_bytes(data)
    git(srepo, "rm", "-q", "README.md")
    commit_all(srepo, f"{branch} overlay")
    git(srepo, "checkout", "-q", "main")
    return srepo


def test_an_instrument_branch_is_laid_over_the_templates(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    srepo = settings_repo_with_branch(tmp_path, {
        ".imaging/settings-version": b"5\n",
        "labview/sample_environment.ini": b'[Sample Environment]\nDevice = "special cryostat"\n',
        "scripts/local_align.py": b"ALIGN = 1\n",
        ".imaging/remove.txt": b"# not used on ZOOM\nconfigurations/devices/detectors.xml\n",
    })
    r = render(repo, settings_repo=srepo)
    assert r.files["labview/sample_environment.ini"] == b'[Sample Environment]\nDevice = "special cryostat"\n'
    assert r.files["scripts/local_align.py"] == b"ALIGN = 1\n"
    assert "configurations/devices/detectors.xml" not in r.files
    assert ".imaging/remove.txt" not in r.files
    assert r.provenance["settings_repo"]["branch"] == ZOOM_VM
    assert r.provenance["settings_repo"]["commit"] == git(srepo, "rev-parse", ZOOM_VM).strip()
    assert git(srepo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert render(repo, settings_repo=srepo).files == r.files


def test_a_branch_at_another_version_or_a_missing_branch_is_refused(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    srepo = settings_repo_with_branch(tmp_path, {".imaging/settings-version": b"3\n", "a.txt": b"a\n"})
    with pytest.raises(InputError, match=r"version 3, the templates at 5.*invoke migrate"):
        render(repo, settings_repo=srepo)
    with pytest.raises(InputError, match="no branch NDXOTHER"):
        render(repo, vm="NDXOTHER", settings_repo=srepo)


def test_a_dirty_checked_out_instrument_branch_is_refused(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    srepo = settings_repo_with_branch(tmp_path, {".imaging/settings-version": b"5\n", "a.txt": b"a\n"})
    git(srepo, "checkout", "-q", ZOOM_VM)
    (srepo / "a.txt").write_text("edited\n")
    with pytest.raises(InputError, match="uncommitted changes: a.txt"):
        render(repo, settings_repo=srepo)
    r = render(repo, settings_repo=srepo, allow_dirty=True)
    assert r.dirty and r.files["a.txt"] == b"edited\n"
    assert not any(k.startswith(".git") for k in r.files)


def test_what_was_deployed_can_be_rendered_again_from_its_provenance(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    deployed = render(repo)
    tpl = repo / "templates" / "settings" / "globals.txt.j2"
    tpl.write_text(tpl.read_text() + "LATER=1\n")
    commit_all(repo, "later change")
    again = rerender_from_provenance(repo, deployed.provenance)
    assert again == {k: v for k, v in deployed.files.items() if k != PROVENANCE_FILE}
    assert rerender_from_provenance(repo, {**deployed.provenance, "dirty": True}) is None


def test_a_project_that_is_not_in_git_needs_allow_dirty(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    import shutil

    from settings_support import TEMPLATES

    shutil.copytree(TEMPLATES, plain / "templates" / "settings")
    with pytest.raises(InputError, match="not in a git repository"):
        render(plain)
    r = render(plain, allow_dirty=True)
    assert r.dirty and r.provenance["commit"] is None
    assert re.match(r"^[0-9a-f]{64}$", r.sha256)


def test_a_variable_with_a_line_break_or_a_list_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    repo = project_repo(tmp_path)
    with pytest.raises(InputError, match=r"instruments/fleet/ZOOM.yaml: field 'variables.technique': line breaks"):
        render(repo, variables={**ZOOM_VARS, "technique": "one\n[Injected]"})
    with pytest.raises(InputError, match=r"field 'variables.detector_banks': a settings variable must be text"):
        render(repo, variables={**ZOOM_VARS, "detector_banks": [1, 2]})


_ONE_LINE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_ONE_LINE)
def test_any_one_line_value_renders_to_well_formed_files_that_read_back_the_value(tmp_path_factory, value) -> None:  # noqa: ANN001
    import ast
    import xml.etree.ElementTree as ET

    repo = _shared_repo(tmp_path_factory)
    r = render(repo, variables={**ZOOM_VARS, "sample_environment": value})
    out = tmp_path_factory.mktemp("render")
    for rel, data in r.files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    check_tree(out)
    root = ET.fromstring(r.files["configurations/ioc/sample_environment.xml"])
    assert root.find(".//macro[@name='DEVICE']").get("value") == value
    tree = ast.parse(r.files["python/init_zoom.py"])
    consts = {n.targets[0].id: n.value.value for n in tree.body if isinstance(n, ast.Assign)}
    assert consts["SAMPLE_ENVIRONMENT"] == value


_REPOS: dict[str, Path] = {}


def _shared_repo(factory) -> Path:  # noqa: ANN001
    if "repo" not in _REPOS:
        _REPOS["repo"] = project_repo(factory.mktemp("shared"))
    return _REPOS["repo"]
