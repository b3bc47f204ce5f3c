"""Helpers for the settings, drift and migration tests: private git repositories and the shipped fleet."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from imaging.model.inventory import load_inventory

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates" / "settings"
V1_TEMPLATES = ROOT / "templates" / "settings-history" / "v1"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "imaging tests", "GIT_AUTHOR_EMAIL": "tests@imaging.invalid",
    "GIT_COMMITTER_NAME": "imaging tests", "GIT_COMMITTER_EMAIL": "tests@imaging.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def init_repo(path: Path, branch: str = "main") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    return path


def commit_all(repo: Path, message: str = "change") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def copy_templates(src: Path, dest: Path) -> None:
    """Copy a template set, leaving out its README (documentation, not a settings file)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("README.md"))


def project_repo(tmp_path: Path, templates: Path = TEMPLATES, name: str = "project") -> Path:
    """A private git repository holding ``templates`` as templates/settings/, committed."""
    repo = init_repo(tmp_path / name)
    copy_templates(templates, repo / "templates" / "settings")
    (repo / "README.md").write_text("test project\n")
    commit_all(repo, "templates")
    return repo


def fleet() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every shipped instrument: name -> (VM, variables including the builtins a reimage passes)."""
    inv = load_inventory(ROOT / "instruments")
    out = {}
    for inst in inv.instruments.values():
        variables = {**inst.variables, "instrument": inst.name, "vm": inst.vm, "host": inst.host,
                     "group": inst.group, "release": "2026C3.0"}
        out[inst.name] = (inst.vm, variables)
    return out


def without_provenance(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != ".imaging/provenance.json"}


def dir_hash(path: Path) -> dict[str, str]:
    """Every file under ``path`` (including .git) with its sha256: proof that nothing changed."""
    from imaging.core.hashing import tree_manifest

    return tree_manifest(path)


def inv(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an invoke task of this checkout against the project copy at ``project``."""
    import sys

    exe = Path(sys.executable).with_name("invoke")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "invoke"]
    return subprocess.run([*cmd, "--search-root", str(ROOT), *args], capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV, "IMAGING_ROOT": str(project), "COLUMNS": "200"},
                          timeout=300, check=False)
