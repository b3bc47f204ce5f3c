"""Git plumbing: reading trees at a ref, dirtiness, committing without a checkout, temporary worktrees."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from settings_support import GIT_ENV, commit_all, git, init_repo

from imaging.core import git as gitrepo
from imaging.core.errors import InputError


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = init_repo(tmp_path / "repo")
    (r / "a").mkdir()
    (r / "a" / "one.txt").write_bytes(b"one\n")
    (r / "a" / "bin.dat").write_bytes(bytes(range(256)) * 3)
    (r / "a" / "sp ace.txt").write_bytes(b"")
    (r / "top.txt").write_bytes(b"top\n")
    commit_all(r, "first")
    return r


def test_read_tree_reads_every_file_at_a_ref_with_exact_bytes(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a" / "one.txt").write_bytes(b"changed\n")
    commit_all(repo, "second")
    assert gitrepo.read_tree(repo, first, "a") == {"bin.dat": bytes(range(256)) * 3, "one.txt": b"one\n",
                                                   "sp ace.txt": b""}
    assert gitrepo.read_tree(repo, "HEAD")["a/one.txt"] == b"changed\n"
    assert gitrepo.read_tree(repo, "HEAD", "missing") == {}


def test_an_unknown_ref_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(InputError, match="no commit named 'nope'"):
        gitrepo.resolve_commit(repo, "nope")
    with pytest.raises(InputError, match="not a git ref"):
        gitrepo.resolve_commit(repo, "--output=/tmp/x")


def test_dirty_paths_sees_changes_untracked_files_and_renames_in_the_given_folder_only(repo: Path) -> None:
    assert gitrepo.dirty_paths(repo, ["a"]) == []
    (repo / "a" / "one.txt").write_text("edited\n")
    (repo / "a" / "new.txt").write_text("new\n")
    (repo / "top.txt").write_text("elsewhere\n")
    git(repo, "mv", "a/sp ace.txt", "a/space.txt")
    assert gitrepo.dirty_paths(repo, ["a"]) == ["a/new.txt", "a/one.txt", "a/space.txt"]
    index_before = (repo / ".git" / "index").read_bytes()
    gitrepo.dirty_paths(repo, ["."])
    assert (repo / ".git" / "index").read_bytes() == index_before


def test_commit_files_changes_a_branch_without_touching_checkout_or_index(repo: Path) -> None:
    git(repo, "branch", "inst")
    (repo / "top.txt").write_text("uncommitted work\n")
    index_before = (repo / ".git" / "index").read_bytes()
    new = gitrepo.commit_files(repo, "inst", {"a/one.txt": None, "b/two.txt": b"two\n"}, "edit inst")
    assert git(repo, "rev-parse", "inst").strip() == new
    tree = gitrepo.read_tree(repo, "inst")
    assert "a/one.txt" not in tree and tree["b/two.txt"] == b"two\n" and tree["top.txt"] == b"top\n"
    assert (repo / "top.txt").read_text() == "uncommitted work\n"
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert gitrepo.commit_files(repo, "inst", {"b/two.txt": b"two\n"}, "no change") == new
    replaced = gitrepo.commit_files(repo, "inst", {"only.txt": b"x"}, "replace", replace=True)
    assert gitrepo.read_tree(repo, replaced) == {"only.txt": b"x"}
    assert git(repo, "log", "--format=%s", "-1", "inst").strip() == "replace"


def test_commit_files_refuses_unsafe_paths_and_a_checked_out_branch(repo: Path) -> None:
    git(repo, "branch", "inst")
    with pytest.raises(InputError, match="'..'"):
        gitrepo.commit_files(repo, "inst", {"../escape": b"x"}, "bad")
    with pytest.raises(InputError, match="checked out"):
        gitrepo.commit_files(repo, "main", {"x": b"x"}, "bad")


def test_temporary_worktree_is_removed_afterwards(repo: Path) -> None:
    with gitrepo.temporary_worktree(repo, "HEAD") as wt:
        assert (wt / "top.txt").read_text() == "top\n"
        path = wt
    assert not path.exists()
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert not any((repo / ".git" / "worktrees").glob("*"))


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.(txt|ini)", fullmatch=True),
                       st.binary(max_size=200), min_size=1, max_size=6))
def test_whatever_is_committed_reads_back_byte_for_byte(tmp_path_factory: pytest.TempPathFactory,
                                                       files: dict[str, bytes]) -> None:
    # a file and a folder of the same name cannot both exist
    if any(other.startswith(rel + "/") for rel in files for other in files):
        return
    r = init_repo(tmp_path_factory.mktemp("prop") / "r")
    commit = gitrepo.commit_files(r, "b", files, "prop", replace=True)
    assert gitrepo.read_tree(r, commit) == files
