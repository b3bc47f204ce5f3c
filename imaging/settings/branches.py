"""Instrument branches of the settings repository: one per instrument VM, made from the common line (the
repository's default branch) the first time an instrument is deployed, with a commit that says so; or
ahead of time by `invoke settings-init`. Until then the instrument renders from the common line itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.model.inventory import Instrument
from imaging.settings.render import VERSION_FILE


def common_line(repo: Path) -> str:
    """The branch the repository's HEAD names (main, master): the line every instrument branch starts from."""
    out = gitrepo.run_git(Path(repo), "symbolic-ref", "--quiet", "--short", "HEAD", check=False).decode().strip()
    if not out or not gitrepo.branch_exists(Path(repo), out):
        raise InputError("the settings repository's HEAD names no branch to start instrument branches from",
                         file=str(repo), field="HEAD",
                         fix=f"git -C {repo} symbolic-ref HEAD refs/heads/main (the common line)")
    return out


def common_files(repo: Path, version: int) -> dict[str, bytes]:
    """The common line's tree, as a new instrument branch starts; a common line without a format version
    file starts at the templates' version."""
    files = gitrepo.read_tree(Path(repo), f"refs/heads/{common_line(repo)}")
    files.setdefault(VERSION_FILE, f"{version}\n".encode())
    return files


@dataclass(frozen=True)
class Created:
    instrument: str
    branch: str
    commit: str
    common: str


def ensure_branch(repo: Path, inst: Instrument, version: int, *, who: str) -> Created | None:
    """Create the instrument's branch from the common line (None: it exists). The commit says where from
    and why; the common line's format version file is added when it has none."""
    repo = Path(repo)
    if gitrepo.branch_exists(repo, inst.vm):
        return None
    common = common_line(repo)
    base = gitrepo.resolve_commit(repo, f"refs/heads/{common}")
    tree = gitrepo.read_tree(repo, base)
    add = {} if VERSION_FILE in tree else {VERSION_FILE: f"{version}\n".encode()}
    message = (f"Create the settings branch of {inst.vm} ({inst.name}) from {common} at {base[:10]}\n\n"
               f"Its first deploy needed one; made by imaging for {who}.\n")
    commit = gitrepo.commit_files(repo, inst.vm, add, message, create_from=f"refs/heads/{common}")
    return Created(inst.name, inst.vm, commit, common)


def missing(repo: Path, insts: list[Instrument]) -> list[Instrument]:
    """The instruments that have no branch yet (they render from the common line until their first deploy)."""
    return [i for i in insts if not gitrepo.branch_exists(Path(repo), i.vm)]
