"""Settings format migrations: discovery, planning, running one checked and committed step at a time.

Every module ``mNNNN_<what>.py`` in this folder is one migration. It declares::

    FROM_VERSION = 2
    TO_VERSION = 3
    DESCRIPTION = "Split labview/instrument.ini into dae.ini and sample_environment.ini"
    def migrate(tree: Path) -> None: ...          # transform the settings tree in place; idempotent
    def check(tree: Path) -> None: ...            # optional: raise MigrationError if the result is wrong
    POST_BOOT = True                              # optional: also has work to do in the running guest
    def guest_command(settings: Mapping[str, bytes]) -> list[str]: ...   # required when POST_BOOT

The runner applies each pending step, checks the tree (the module's check plus a well-formedness check of
every XML, JSON, ini and Python file), and only then records the new version in the tree's version file
and commits. A failure leaves the recorded version at the last good step; a rerun starts from there.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import importlib
import importlib.util
import json
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from imaging.core import git as gitrepo
from imaging.core.errors import ImagingError, InputError
from imaging.settings.drift import tree_diff
from imaging.settings.migrations._text import MigrationError
from imaging.settings.render import VERSION_FILE, parse_version

__all__ = [
    "Migration", "MigrationError", "MigrationFailed", "PostBootStep", "BranchMigration", "Rehearsal",
    "discover", "latest_version", "oldest_version", "plan_migrations", "read_version", "write_version",
    "check_tree", "run_migrations", "migrate_files", "migrate_branch", "restore_branch", "rehearse",
    "rehearse_all", "rehearse_branches", "post_boot_steps", "completion_record", "POST_BOOT_DIR",
]

PACKAGE_DIR = Path(__file__).resolve().parent
MODULE_RE = re.compile(r"^m(\d{4})_[a-z0-9_]+\.py$")
POST_BOOT_DIR = "imaging/migrations"  # on the Var volume (C:\Instrument\Var\imaging\migrations\<id>.json)


@dataclass(frozen=True)
class Migration:
    """One step from a settings format version to the next."""

    id: str  # the module's name, e.g. m0002_split_labview_ini
    from_version: int
    to_version: int
    description: str
    migrate: Callable[[Path], None]
    check: Callable[[Path], None] | None = None
    post_boot: bool = False
    guest_command: Callable[[Mapping[str, bytes]], list[str]] | None = None
    source: str = ""

    @property
    def title(self) -> str:
        return f"{self.id} (v{self.from_version} -> v{self.to_version}): {self.description}"


class MigrationFailed(ImagingError):
    """A step failed; ``version`` is the version the tree still records (the last good step)."""

    def __init__(self, step: Migration, version: int, reason: str, done: list[str]) -> None:
        self.step, self.version, self.reason, self.done = step, version, reason, done
        super().__init__(f"settings migration {step.title} failed: {reason}. The settings stay at version "
                         f"{version}" + (f" (steps done: {', '.join(done)})" if done else "")
                         + "; fix the cause and run the migration again (finished steps are not repeated)")


# --- discovery ---------------------------------------------------------------------------------------


def _load_module(path: Path, folder: Path) -> ModuleType:
    if folder.resolve() == PACKAGE_DIR:
        return importlib.import_module(f"{__name__}.{path.stem}")
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_imaging_migration_{tag}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InputError("cannot load the migration module", file=str(path), fix="check the file name")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_module(module: ModuleType, path: Path) -> Migration:
    def need(name: str, kind: type | tuple[type, ...]) -> Any:
        value = getattr(module, name, None)
        if value is None or not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise InputError(f"the migration must define {name}", file=str(path), field=name, value=value,
                             fix=f"add a module-level {name} ({'a whole number' if kind is int else 'see docs'})")
        return value

    frm, to = need("FROM_VERSION", int), need("TO_VERSION", int)
    desc = need("DESCRIPTION", str).strip()
    if not desc:
        raise InputError("DESCRIPTION is empty", file=str(path), field="DESCRIPTION", fix="say what it changes")
    if to <= frm or frm < 1:
        raise InputError("TO_VERSION must be greater than FROM_VERSION (both from 1)", file=str(path),
                         field="TO_VERSION", value=to, fix="a migration moves the format forward")
    migrate = getattr(module, "migrate", None)
    if not callable(migrate):
        raise InputError("the migration must define migrate(tree)", file=str(path), field="migrate",
                         fix="add def migrate(tree: Path) -> None")
    check = getattr(module, "check", None)
    post_boot = bool(getattr(module, "POST_BOOT", False))
    guest = getattr(module, "guest_command", None)
    if post_boot and not callable(guest):
        raise InputError("a POST_BOOT migration must define guest_command(settings)", file=str(path),
                         field="guest_command", fix="return the command the guest runs, as a list of arguments")
    return Migration(id=path.stem, from_version=frm, to_version=to, description=desc, migrate=migrate,
                     check=check if callable(check) else None, post_boot=post_boot,
                     guest_command=guest if post_boot else None, source=str(path))


def discover(folder: Path | None = None) -> list[Migration]:
    """Every migration in ``folder`` (default: this package), ordered and checked to form one chain."""
    folder = Path(folder) if folder else PACKAGE_DIR
    found = [_from_module(_load_module(p, folder), p)
             for p in sorted(folder.iterdir()) if MODULE_RE.match(p.name)]
    found.sort(key=lambda m: m.from_version)
    for prev, nxt in zip(found, found[1:], strict=False):
        if nxt.from_version != prev.to_version:
            raise InputError(f"the migrations do not form one chain: {prev.id} ends at v{prev.to_version}, "
                             f"{nxt.id} starts at v{nxt.from_version}", file=nxt.source, field="FROM_VERSION",
                             value=nxt.from_version, fix=f"start it at v{prev.to_version}")
    return found


_DEFAULT: list[Migration] | None = None


def _chain(migrations: list[Migration] | None) -> list[Migration]:
    global _DEFAULT
    if migrations is not None:
        return migrations
    if _DEFAULT is None:
        _DEFAULT = discover()
    return _DEFAULT


def latest_version(migrations: list[Migration] | None = None) -> int:
    chain = _chain(migrations)
    return chain[-1].to_version if chain else 1


def oldest_version(migrations: list[Migration] | None = None) -> int:
    """The oldest settings format that can still be migrated to the latest."""
    chain = _chain(migrations)
    return chain[0].from_version if chain else 1


def plan_migrations(current: int, target: int, migrations: list[Migration] | None = None) -> list[Migration]:
    """The steps from ``current`` to ``target``, in order (empty when already there). Pure."""
    chain = _chain(migrations)
    if target < current:
        raise InputError(f"the settings are at version {current}, newer than the {target} asked for",
                         field="settings_version", value=target,
                         fix="migrations only go forward; roll back to the settings before the migration instead")
    steps = [m for m in chain if current <= m.from_version and m.to_version <= target]
    if current != target and (not steps or steps[0].from_version != current or steps[-1].to_version != target):
        raise InputError(f"no migration path from settings version {current} to {target}",
                         field="settings_version", value=current,
                         fix=f"supported versions are {oldest_version(chain)} to {latest_version(chain)}")
    return steps


# --- the version file and checks ---------------------------------------------------------------------


def read_version(tree: Path) -> int:
    path = Path(tree) / VERSION_FILE
    return parse_version(path.read_bytes() if path.exists() else None, source=str(tree))


def write_version(tree: Path, version: int) -> None:
    path = Path(tree) / VERSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".imaging-tmp")
    tmp.write_text(f"{version}\n", encoding="utf-8")
    tmp.replace(path)


def check_tree(tree: Path) -> None:
    """Every structured file in the tree still parses: XML, JSON, ini and Python."""
    for path in sorted(Path(tree).rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(tree).as_posix()
        if path.name.endswith(".imaging-tmp"):
            raise MigrationError(f"{rel}: a half-written file was left behind")
        data = path.read_bytes()
        try:
            if path.suffix == ".xml":
                ET.fromstring(data)
            elif path.suffix == ".json":
                json.loads(data)
            elif path.suffix == ".ini":
                parser = configparser.ConfigParser(interpolation=None, strict=True)
                parser.read_string(data.decode("utf-8"), source=rel)
            elif path.suffix == ".py":
                ast.parse(data, filename=rel)
        except (ET.ParseError, ValueError, configparser.Error, SyntaxError, UnicodeDecodeError) as exc:
            raise MigrationError(f"{rel} is no longer well-formed: {exc}") from None


# --- running -----------------------------------------------------------------------------------------


def run_migrations(tree: Path, target: int, *, commit: Callable[[Migration, Path], None] | None = None,
                   migrations: list[Migration] | None = None) -> list[Migration]:
    """Bring the settings tree at ``tree`` to ``target``, one checked step at a time.

    After each step: the module's check and :func:`check_tree` run, then the version file is written, then
    ``commit(step, tree)`` is called (the branch commit). Returns the steps that ran.
    """
    tree = Path(tree)
    current = read_version(tree)
    steps = plan_migrations(current, target, migrations)
    if steps:
        try:
            check_tree(tree)
        except MigrationError as exc:
            raise InputError(f"the settings are already damaged before migrating: {exc}", file=str(tree),
                             fix="repair the file (or capture the instrument's real version of it) first") from None
    done: list[str] = []
    for step in steps:
        try:
            step.migrate(tree)
            if step.check:
                step.check(tree)
            check_tree(tree)
        except (MigrationError, InputError) as exc:
            raise MigrationFailed(step, read_version(tree), str(exc), done) from exc
        except Exception as exc:  # a bug or an unexpected file in one step must not hide which step it was
            raise MigrationFailed(step, read_version(tree), f"{type(exc).__name__}: {exc}", done) from exc
        write_version(tree, step.to_version)
        if commit is not None:
            commit(step, tree)
        done.append(step.id)
    return steps


def migrate_files(files: Mapping[str, bytes], target: int, *,
                  migrations: list[Migration] | None = None) -> tuple[dict[str, bytes], list[Migration]]:
    """Migrate a settings tree held in memory, in a temporary folder; returns the new files and the steps."""
    with tempfile.TemporaryDirectory(prefix="imaging-migrate-") as tmp:
        tree = Path(tmp) / "tree"
        gitrepo.write_dir(tree, files)
        steps = run_migrations(tree, target, migrations=migrations)
        return gitrepo.read_dir(tree), steps


def commit_message(step: Migration) -> str:
    return f"Settings migration {step.id}: v{step.from_version} -> v{step.to_version}\n\n{step.description}\n"


@dataclass(frozen=True)
class BranchMigration:
    """What migrating one instrument's settings branch did (or, in a dry run, would do)."""

    branch: str
    before_commit: str  # keep it: rolling back restores this tree
    after_commit: str | None  # None in a dry run
    from_version: int
    to_version: int
    steps: list[str]
    diff: str


def migrate_branch(repo: Path, branch: str, target: int, *, dry_run: bool = False,
                   migrations: list[Migration] | None = None) -> BranchMigration:
    """Migrate an instrument's branch of the settings repository: one commit per step, no checkout used.

    The branch is copied into a temporary folder; after each successful, checked step the whole tree is
    committed to the branch. If a step fails, the branch keeps the commits of the steps before it.
    """
    before = gitrepo.resolve_commit(repo, f"refs/heads/{branch}")
    files = gitrepo.read_tree(repo, before)
    start = parse_version(files.get(VERSION_FILE), source=f"{repo}@{branch}")
    head = {"commit": before}

    def commit(step: Migration, tree: Path) -> None:
        if not dry_run:
            head["commit"] = gitrepo.commit_files(repo, branch, gitrepo.read_dir(tree), commit_message(step),
                                                  replace=True)

    with tempfile.TemporaryDirectory(prefix="imaging-migrate-") as tmp:
        tree = Path(tmp) / "tree"
        gitrepo.write_dir(tree, files)
        steps = run_migrations(tree, target, commit=commit, migrations=migrations)
        after = gitrepo.read_dir(tree)
    return BranchMigration(branch=branch, before_commit=before, after_commit=None if dry_run else head["commit"],
                           from_version=start, to_version=target if steps else start,
                           steps=[s.id for s in steps], diff=tree_diff(files, after))


def restore_branch(repo: Path, branch: str, commit: str) -> str:
    """Rollback: a new commit on ``branch`` whose tree is the tree of ``commit`` (history is kept)."""
    files = gitrepo.read_tree(repo, commit)
    return gitrepo.commit_files(repo, branch, files, f"Restore the settings of {branch} to {commit[:12]} "
                                f"(rollback of settings migrations)\n", replace=True)


# --- rehearsal ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rehearsal:
    """Whether an instrument's settings would migrate cleanly, and what would change."""

    name: str
    ok: bool
    from_version: int | None
    to_version: int | None
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    changed_files: list[str] = field(default_factory=list)


def rehearse(name: str, files: Mapping[str, bytes], target: int, *,
             migrations: list[Migration] | None = None) -> Rehearsal:
    """Run the migrations on a throw-away copy of ``files``; report, never raise for a failing step."""
    try:
        start = parse_version(files.get(VERSION_FILE), source=name)
        after, steps = migrate_files(files, target, migrations=migrations)
    except (MigrationFailed, InputError) as exc:
        ver = getattr(exc, "version", None)
        return Rehearsal(name=name, ok=False, from_version=ver, to_version=None, error=str(exc))
    changed = sorted(rel for rel in set(files) | set(after) if files.get(rel) != after.get(rel))
    return Rehearsal(name=name, ok=True, from_version=start, to_version=target if steps else start,
                     steps=[s.id for s in steps], changed_files=changed)


def rehearse_all(sources: Mapping[str, Mapping[str, bytes]], target: int, *,
                 migrations: list[Migration] | None = None) -> list[Rehearsal]:
    """Rehearse every instrument's settings tree ({name: files}); nothing outside temp folders changes."""
    return [rehearse(name, sources[name], target, migrations=migrations) for name in sorted(sources)]


def rehearse_branches(repo: Path, branches: Collection[str], target: int, *,
                      migrations: list[Migration] | None = None) -> list[Rehearsal]:
    """Rehearse instrument branches of the settings repository, reading them from git objects only."""
    out = []
    for branch in sorted(branches):
        if not gitrepo.branch_exists(repo, branch):
            out.append(Rehearsal(name=branch, ok=False, from_version=None, to_version=None,
                                 error=f"the settings repository {repo} has no branch {branch}"))
            continue
        out.append(rehearse(branch, gitrepo.read_tree(repo, f"refs/heads/{branch}"), target,
                            migrations=migrations))
    return out


# --- post-boot steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostBootStep:
    """Work a migration must do inside the running guest, and where its completion is recorded on Var."""

    migration: str
    description: str
    command: list[str]  # argv run in the guest; every element goes through quoting.ps_literal
    marker: str  # posix path relative to the Var volume


def post_boot_steps(from_version: int, to_version: int, settings: Mapping[str, bytes], done: Collection[str],
                    migrations: list[Migration] | None = None) -> list[PostBootStep]:
    """The post-boot steps between two versions not yet recorded as done on the Var volume (``done``
    holds the marker paths found there). ``settings`` is the rendered tree the guest now runs. Pure."""
    out = []
    for step in plan_migrations(from_version, to_version, migrations):
        if not step.post_boot or step.guest_command is None:
            continue
        marker = f"{POST_BOOT_DIR}/{step.id}.json"
        if marker in done:
            continue
        out.append(PostBootStep(migration=step.id, description=step.description,
                                command=[str(a) for a in step.guest_command(settings)], marker=marker))
    return out


def completion_record(step: PostBootStep, *, op_id: str, result: Mapping[str, Any]) -> tuple[str, bytes]:
    """The marker file to write on Var once the guest command succeeded: (relpath, content)."""
    body = {"migration": step.migration, "description": step.description, "command": step.command,
            "op_id": op_id, "result": dict(result)}
    return step.marker, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

