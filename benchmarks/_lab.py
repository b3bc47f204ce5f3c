"""A private, committed copy of the project's data for a benchmark to run the lab in (never the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lab_project(parent: Path, name: str = "project") -> Path:
    """Copy instruments/, releases/ and templates/ under ``parent`` and commit them in a new git repo."""
    proj = Path(parent) / name
    proj.mkdir()
    for folder in ("instruments", "releases", "templates"):
        shutil.copytree(ROOT / folder, proj / folder, symlinks=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@imaging.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@imaging.invalid"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "benchmark fixture"]):
        subprocess.run(["git", "-C", str(proj), *cmd], check=True, env=env)
    return proj
