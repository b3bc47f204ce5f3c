"""Issue 17: older releases deploy with the templates they were made with, and the next deploy migrates.

On today's main before this change, 2025C5.0 (settings format 3) could not be deployed at all: the templates
at HEAD are at format 5 and no ref held format 3.
"""

from __future__ import annotations

import json
from pathlib import Path

from settings_support import commit_all, git, inv

from imaging.core import git as gitrepo

LET_SETTINGS = "HVHOST03/D/Imaging/instruments/NDXLET"


def _settings_volume(project: Path, release: str) -> dict[str, bytes]:
    folder = project / ".state" / "lab" / "hosts" / LET_SETTINGS
    (disk,) = [p for p in folder.iterdir() if p.name.startswith(f"NDXLET-settings-{release}-")]
    return gitrepo.read_dir(disk / "content")


def test_an_older_release_deploys_with_its_own_templates_and_the_next_deploy_migrates_it(project: Path) -> None:
    assert inv(project, "settings-sample").returncode == 0
    repo = project / ".state" / "sample-settings-repo"
    defaults = project / "instruments" / "defaults.yaml"
    defaults.write_text(defaults.read_text() + f"settings_repo: {repo}\n")
    commit_all(project, "use the sample settings repository")

    res = inv(project, "deploy", "--release=2025C5.0", "--instruments=LET", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    old = _settings_volume(project, "2025C5.0")
    assert old[".imaging/settings-version"] == b"3\n"
    assert b"[Database]" in old["config/instrument.ini"] and "database/connection.json" not in old
    provenance = json.loads(old[".imaging/provenance.json"])
    assert provenance["templates_dir"] == "templates/settings-history/v3" and not provenance["dirty"]

    plan = inv(project, "deploy", "--release=2026C3.1", "--instruments=LET", "--dry-run")
    assert "m0003_database_section_to_json" in plan.stdout and "m0004_database_schema_v2" in plan.stdout
    res = inv(project, "deploy", "--release=2026C3.1", "--instruments=LET", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    new = _settings_volume(project, "2026C3.1")
    assert new[".imaging/settings-version"] == b"5\n"
    assert json.loads(new["database/connection.json"])["schema_version"] == 2
    assert b"[Database]" not in new["config/instrument.ini"]
    # the branch went through format 4 on the way, one commit per step
    log = git(repo, "log", "--format=%s", "NDXLET").splitlines()
    assert [ln.split(":")[0] for ln in log[:2]] == ["Settings migration m0004_database_schema_v2",
                                                   "Settings migration m0003_database_section_to_json"]
    # the post-boot database step ran in the guest and left its marker on Var
    var = project / ".state" / "lab" / "hosts" / LET_SETTINGS / "NDXLET-var.vhdx" / "content"
    assert (var / "imaging" / "migrations" / "m0004_database_schema_v2.json").is_file()
    assert "UPDATE schema_info SET version = 2" in (var / "imaging" / "guest-commands.log").read_text()


def test_a_release_without_its_templates_is_refused_with_the_field_to_set(project: Path) -> None:
    rel = project / "releases" / "2026C1.0.yaml"
    rel.write_text("\n".join(ln for ln in rel.read_text().splitlines()
                             if not ln.startswith(("settings_templates:", "  ref:", "  dir:"))) + "\n")
    commit_all(project, "a release that names no templates")
    res = inv(project, "deploy", "--release=2026C1.0", "--instruments=LET", "--dry-run")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "needs settings version 4" in out and "settings_templates" in out, out
