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


@dataclass(frozen=True)
class Merge:
    """The common line merged into an instrument's branch (in git objects only, no checkout)."""

    tree: str | None  # the merged tree; None when there are conflicts
    conflicts: list[str]  # files both changed differently since the branch left the common line
    needed: bool  # False: the branch already holds everything of the common line
    common: str


def merge_common(repo: Path, inst: Instrument) -> Merge:
    """Three-way merge of the common line into the instrument's branch, as facilities do by hand at each
    upgrade: files only the common line changed come in, files only the branch changed stay, files both
    changed differently are conflicts (found by `render --all --check`, never deployed)."""
    repo = Path(repo)
    common = common_line(repo)
    ours, theirs = f"refs/heads/{inst.vm}", f"refs/heads/{common}"
    if gitrepo.is_ancestor(repo, theirs, ours) or gitrepo.merge_base(repo, ours, theirs) is None:
        return Merge(None, [], False, common)  # nothing new on the common line, or a branch of its own
    out = gitrepo.run_git(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs,
                          check=False).decode()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"git could not merge {common} into {inst.vm}", file=str(repo), field="branch",
                         value=inst.vm, fix="merge it by hand (git 2.38 or later is needed for merge-tree)")
    conflicts = sorted(set(lines[1:]))
    return Merge(None if conflicts else lines[0], conflicts, True, common)


def refuse_conflicts(inst: Instrument, merge: Merge, repo: Path) -> None:
    if merge.conflicts:
        raise InputError(f"{inst.name}: merging the common line {merge.common} into branch {inst.vm} conflicts in "
                         f"{', '.join(merge.conflicts)}; nothing was deployed", file=str(repo), field="branch",
                         value=inst.vm, fix=f"merge {merge.common} into {inst.vm} by hand and resolve those files "
                                            f"(git -C {repo} checkout {inst.vm} && git merge {merge.common})")


def merged_files(repo: Path, merge: Merge) -> dict[str, bytes]:
    """The files of a clean merge's tree (for a render held in memory: a dry run, a check)."""
    assert merge.tree is not None
    # merge-tree wrote the tree as loose objects; a commit object (referenced by nothing, like the tree)
    # lets the one tree reader read it. No ref moves.
    who = {"GIT_AUTHOR_NAME": "imaging", "GIT_AUTHOR_EMAIL": "imaging@localhost",
           "GIT_COMMITTER_NAME": "imaging", "GIT_COMMITTER_EMAIL": "imaging@localhost"}  # a check needs no identity
    preview = gitrepo.run_git(Path(repo), "commit-tree", merge.tree, "-m", "imaging: merge preview",
                              env=who).decode().strip()
    return gitrepo.read_tree(Path(repo), preview)


def commit_merge(repo: Path, inst: Instrument, merge: Merge, *, who: str) -> str:
    """Record a clean merge on the instrument's branch: a merge commit with both parents, the branch moved
    by compare-and-swap (a concurrent change is refused, not lost)."""
    repo = Path(repo)
    assert merge.tree is not None
    ours = gitrepo.resolve_commit(repo, f"refs/heads/{inst.vm}")
    theirs = gitrepo.resolve_commit(repo, f"refs/heads/{merge.common}")
    message = (f"Merge the common line {merge.common} ({theirs[:10]}) into {inst.vm} for its deploy\n\n"
               f"Made by imaging for {who}.\n")
    new = gitrepo.run_git(repo, "commit-tree", merge.tree, "-p", ours, "-p", theirs, "-m", message).decode().strip()
    gitrepo.run_git(repo, "update-ref", "-m", f"imaging: merge {merge.common}", f"refs/heads/{inst.vm}", new, ours)
    return new
