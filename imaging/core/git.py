"""The one way git is run: read trees at a ref, check dirtiness, commit without a checkout, commit one file.

Everything here runs ``git -C <repo> ...`` with argument lists. Reading never needs the ref checked out
(``ls-tree`` and ``cat-file --batch``), and committing builds the new tree in a private index file
(``hash-object``, ``update-index``, ``write-tree``, ``commit-tree``, ``update-ref``), so the user's
checkout, index and working tree are never touched. The one exception is ``commit_file``: labels and
revocations are files of the project checkout, committed with the user's own identity so that their
history is the git log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import ImagingError, InputError
from imaging.core.quoting import check_name, check_relpath

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class GitError(ImagingError):
    """A git command failed; the message carries git's own explanation."""


def _git(repo: Path, *args: str, input: bytes | None = None,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, env=full_env,
                          check=False)


def run_git(repo: Path, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None,
            check: bool = True) -> bytes:
    """Run one git command in ``repo`` and return its stdout; raise GitError with git's stderr on failure."""
    proc = _git(repo, *args, input=input, env=env)
    if check and proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
        raise GitError(f"git {' '.join(args[:2])} in {repo} failed: {msg}")
    return proc.stdout


def is_repo(path: Path) -> bool:
    if not Path(path).is_dir():
        return False
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, check=False)
    return proc.returncode == 0


def toplevel(path: Path) -> Path:
    """The root of the working tree that contains ``path``."""
    return Path(run_git(path, "rev-parse", "--show-toplevel").decode().strip())


def resolve_commit(repo: Path, ref: str) -> str:
    """The full commit id a branch, tag or commit names; a clear error if it names nothing."""
    if not ref or ref.startswith("-") or "\x00" in ref:
        raise InputError("not a git ref", field="ref", value=ref, fix="give a branch, tag or commit id")
    out = run_git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
    commit = out.decode().strip()
    if not commit:
        raise InputError(f"no commit named {ref!r} in {repo}", field="ref", value=ref,
                         fix="give an existing branch, tag or commit id (see `git log`)")
    return commit


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    """Whether ``older`` is ``newer`` or one of its ancestors (nothing of it is missing from ``newer``)."""
    return _git(repo, "merge-base", "--is-ancestor", older, newer).returncode == 0


def merge_base(repo: Path, a: str, b: str) -> str | None:
    """The best common ancestor of two commits; None for unrelated histories."""
    proc = _git(repo, "merge-base", a, b)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def branch_exists(repo: Path, branch: str) -> bool:
    check_name(branch, field="branch", file=str(repo))
    out = run_git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False)
    return bool(out.strip())


def list_branches(repo: Path) -> list[str]:
    out = run_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    return sorted(line for line in out.decode().splitlines() if line)


def read_tree(repo: Path, ref: str, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``prefix`` at ``ref`` as {relpath below prefix: bytes}, read from git objects only.

    Symbolic links and submodules are refused: a settings tree holds plain files.
    """
    commit = resolve_commit(repo, ref)
    prefix = prefix.strip("/")
    args = ["ls-tree", "-r", "-z", "--full-tree", commit]
    if prefix:
        args += ["--", prefix + "/"]
    entries = []
    for item in run_git(repo, *args).split(b"\0"):
        if not item:
            continue
        meta, path = item.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        rel = path.decode("utf-8")
        if kind != "blob" or mode == "120000":
            raise InputError(f"{rel} at {ref} is a {'symbolic link' if mode == '120000' else kind}, not a file",
                             file=str(repo), fix="keep only plain files in a settings tree")
        if prefix:
            rel = rel[len(prefix) + 1:]
        entries.append((rel, sha))
    blobs = cat_blobs(repo, [sha for _, sha in entries])
    return {rel: blobs[sha] for rel, sha in sorted(entries)}


def cat_blobs(repo: Path, shas: list[str]) -> dict[str, bytes]:
    """Read many blobs in one ``git cat-file --batch`` call."""
    unique = sorted(set(shas))
    if not unique:
        return {}
    out = run_git(repo, "cat-file", "--batch", input=("\n".join(unique) + "\n").encode())
    blobs: dict[str, bytes] = {}
    pos = 0
    for sha in unique:
        eol = out.index(b"\n", pos)
        header = out[pos:eol].decode().split()
        if len(header) != 3 or header[0] != sha:
            raise GitError(f"unexpected answer from git cat-file for {sha}: {' '.join(header)}")
        size = int(header[2])
        blobs[sha] = out[eol + 1:eol + 1 + size]
        pos = eol + 1 + size + 1  # the content is followed by a newline
    return blobs


def dirty_paths(repo: Path, paths: list[str]) -> list[str]:
    """Files under ``paths`` that differ from HEAD in the index or the working tree, or are untracked.

    Uses ``--no-optional-locks`` so that asking never rewrites the user's index.
    """
    out = run_git(repo, "--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all",
                  "--", *(paths or ["."]))
    found = []
    records = out.split(b"\0")
    i = 0
    while i < len(records):
        rec = records[i]
        i += 1
        if not rec:
            continue
        status, path = rec[:2].decode(), rec[3:].decode("utf-8")
        if status[0] in "RC":
            i += 1  # a rename's source path follows as its own record
        found.append(path)
    return sorted(found)


def head_commit(repo: Path) -> str | None:
    out = run_git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    return out.decode().strip() or None


def checked_out_branches(repo: Path) -> set[str]:
    """Branches checked out in any worktree of the repository (committing to them would confuse the user)."""
    out = run_git(repo, "worktree", "list", "--porcelain").decode()
    return {line.split(" ", 1)[1].removeprefix("refs/heads/") for line in out.splitlines()
            if line.startswith("branch ")}


def commit_files(repo: Path, branch: str, files: Mapping[str, bytes | None], message: str, *,
                 replace: bool = False, create_from: str | None = None,
                 identity: Mapping[str, str] | None = None) -> str:
    """Commit ``files`` ({relpath: bytes, or None to delete}) on ``branch`` without touching any checkout.

    ``replace=True`` makes the commit's tree exactly ``files`` (a whole settings tree); otherwise the files
    are laid over the branch's current tree. A missing branch is created from ``create_from`` (a ref) or as
    a new root commit. The branch moves with a compare-and-swap, so a concurrent change is refused, not
    lost. Returns the new commit id (or the old one when nothing changed).
    """
    check_name(branch, field="branch", file=str(repo))
    if branch in checked_out_branches(repo):
        raise InputError(f"branch {branch} is checked out in a worktree of {repo}", field="branch", value=branch,
                         fix="check out another branch there (settings branches are written by the tool)")
    old = resolve_commit(repo, f"refs/heads/{branch}") if branch_exists(repo, branch) else None
    parent = old or (resolve_commit(repo, create_from) if create_from else None)
    with tempfile.TemporaryDirectory(prefix="imaging-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parent and not replace:
            run_git(repo, "read-tree", parent, env=env)
        else:
            run_git(repo, "read-tree", "--empty", env=env)
        index_lines = []
        removals = []
        for rel in sorted(files):
            safe = check_relpath(rel, field="path", file=str(repo))
            data = files[rel]
            if data is None:
                removals.append(safe)
                continue
            sha = run_git(repo, "hash-object", "-w", "--stdin", input=data).decode().strip()
            index_lines.append(f"100644 {sha}\t{safe}")
        if index_lines:
            run_git(repo, "update-index", "--add", "--index-info", env=env,
                    input=("\n".join(index_lines) + "\n").encode())
        if removals:
            run_git(repo, "update-index", "--force-remove", "-z", "--stdin", env=env,
                    input=b"".join(r.encode() + b"\0" for r in removals))
        tree = run_git(repo, "write-tree", env=env).decode().strip()
    if parent and run_git(repo, "rev-parse", f"{parent}^{{tree}}").decode().strip() == tree and old:
        return old
    args = ["commit-tree", tree, "-m", message]
    if parent:
        args[2:2] = ["-p", parent]
    new = run_git(repo, *args, env=identity).decode().strip()  # identity: GIT_AUTHOR_* / GIT_COMMITTER_*
    run_git(repo, "update-ref", "-m", f"imaging: {message.splitlines()[0]}", f"refs/heads/{branch}", new,
            old or "0" * 40, env=identity)
    return new


def export_tree(repo: Path, ref: str, dest: Path, prefix: str = "") -> str:
    """Write the files of ``ref`` (under ``prefix``) into ``dest``: a throw-away copy that leaves the
    repository itself untouched (no worktree metadata, no index). Returns the commit id."""
    commit = resolve_commit(repo, ref)
    for rel, data in read_tree(repo, commit, prefix).items():
        target = Path(dest).joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return commit


@contextmanager
def temporary_worktree(repo: Path, ref: str) -> Iterator[Path]:
    """A detached worktree of ``ref`` in a temporary folder, removed (and pruned) afterwards."""
    commit = resolve_commit(repo, ref)
    tmp = Path(tempfile.mkdtemp(prefix="imaging-wt-"))
    wt = tmp / "tree"
    run_git(repo, "worktree", "add", "--detach", "--quiet", str(wt), commit)
    try:
        yield wt
    finally:
        run_git(repo, "worktree", "remove", "--force", str(wt), check=False)
        run_git(repo, "worktree", "prune", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def read_dir(root: Path) -> dict[str, bytes]:
    """All regular files under ``root`` as {posix relpath: bytes} (a settings tree on disk), without ``.git``."""
    root = Path(root)
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        if p.relative_to(root).parts[0] == ".git":
            continue  # a working tree's git metadata is never part of a settings tree
        if p.is_symlink():
            raise InputError("symbolic links are not allowed in a settings tree", file=str(p),
                             fix="replace the link by the file it points to")
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def write_dir(root: Path, files: Mapping[str, bytes]) -> None:
    """Make ``root`` hold exactly ``files`` (removing any other file)."""
    root = Path(root)
    existing = read_dir(root) if root.exists() else {}
    for rel in existing:
        if rel not in files:
            (root / rel).unlink()
    for rel, data in files.items():
        target = root.joinpath(*check_relpath(rel, field="path").split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if existing.get(rel) != data:
            target.write_bytes(data)


# --- one file of the project checkout, with the user's identity --------------------------------------


@dataclass(frozen=True)
class CommitResult:
    committed: bool
    detail: str  # the commit id, or why nothing was committed


def _text(repo: Path, *args: str) -> tuple[int, str]:
    proc = _git(repo, *args)
    return proc.returncode, (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()


def _identity(root: Path) -> bool:
    for env_key, cfg_key in (("GIT_AUTHOR_NAME", "user.name"), ("GIT_AUTHOR_EMAIL", "user.email")):
        if not os.environ.get(env_key) and not _text(root, "config", "--get", cfg_key)[1]:
            return False
    return True


def commit_file(root: Path, file: Path, message: str) -> CommitResult:
    """Commit ``file`` alone (other staged or changed files are left as they are).

    Committed only when the project is a git checkout and the user has an identity (``user.name`` and
    ``user.email``, or the ``GIT_AUTHOR_*`` variables); otherwise the change stays uncommitted and the result
    says why, for the caller to print."""
    root, file = Path(root), Path(file)
    if _text(root, "rev-parse", "--is-inside-work-tree")[1] != "true":
        return CommitResult(False, f"{root} is not a git checkout; the change to {file.name} is not committed")
    try:
        rel = file.resolve().relative_to(Path(_text(root, "rev-parse", "--show-toplevel")[1]).resolve())
    except ValueError:
        return CommitResult(False, f"{file} is outside the git checkout {root}; it is not committed")
    if not _identity(root):
        return CommitResult(False, "git has no user.name/user.email for you; the change is left uncommitted: "
                                   f"set them and run `git -C {root} commit -- {rel.as_posix()}`")
    code, out = _text(root, "add", "--", rel.as_posix())
    if code != 0:
        return CommitResult(False, f"git add failed: {out}")
    code, out = _text(root, "commit", "-q", "-m", message, "--", rel.as_posix())
    if code != 0:
        return CommitResult(False, f"git commit failed: {out}")
    return CommitResult(True, _text(root, "rev-parse", "--short", "HEAD")[1])
