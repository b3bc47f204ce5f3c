"""Committing one changed file of the project checkout, with the user's own git identity.

Labels and revocations live in git so that their history is the git log. A change is committed only when
the project is a git checkout and the user has an identity (``user.name``/``user.email`` or the
``GIT_AUTHOR_*`` variables); otherwise it stays uncommitted and the caller says so.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CommitResult:
    committed: bool
    detail: str  # the commit id, or why nothing was committed


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def _identity(root: Path) -> bool:
    for env_key, cfg_key in (("GIT_AUTHOR_NAME", "user.name"), ("GIT_AUTHOR_EMAIL", "user.email")):
        if not os.environ.get(env_key) and not _git(root, "config", "--get", cfg_key).stdout.strip():
            return False
    return True


def commit_file(root: Path, file: Path, message: str) -> CommitResult:
    """Commit ``file`` alone (other staged or changed files are left as they are)."""
    root, file = Path(root), Path(file)
    if _git(root, "rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        return CommitResult(False, f"{root} is not a git checkout; the change to {file.name} is not committed")
    try:
        rel = file.resolve().relative_to(Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip()).resolve())
    except ValueError:
        return CommitResult(False, f"{file} is outside the git checkout {root}; it is not committed")
    if not _identity(root):
        return CommitResult(False, "git has no user.name/user.email for you; the change is left uncommitted: "
                                   f"set them and run `git -C {root} commit -- {rel.as_posix()}`")
    add = _git(root, "add", "--", rel.as_posix())
    if add.returncode != 0:
        return CommitResult(False, f"git add failed: {add.stderr.strip()}")
    done = _git(root, "commit", "-q", "-m", message, "--", rel.as_posix())
    if done.returncode != 0:
        return CommitResult(False, f"git commit failed: {(done.stderr or done.stdout).strip()}")
    return CommitResult(True, _git(root, "rev-parse", "--short", "HEAD").stdout.strip())
