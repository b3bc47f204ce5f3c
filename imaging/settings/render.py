"""Per-instrument settings rendered from git: templates, the instrument's variables, an optional overlay.

The templates are read from ``templates/settings/`` at an explicit git ref (never from whatever happens to
be checked out), rendered with Jinja2 in strict mode, overlaid with the files of the instrument's branch of
the external settings repository (if there is one), and stamped with a provenance file. The same inputs
always give byte-identical output, so a digest proves what an instrument runs.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import jinja2

from imaging.core import git as gitrepo
from imaging.core.errors import InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.core.quoting import check_relpath

TEMPLATES_DIR = "templates/settings"
VERSION_FILE = ".imaging/settings-version"
PROVENANCE_FILE = ".imaging/provenance.json"
MANIFEST_FILE = ".imaging/manifest.json"  # written by the provider next to the files it deploys
REMOVE_FILE = ".imaging/remove.txt"  # in an overlay branch: rendered files the instrument does without
OVERLAY_META = (VERSION_FILE, REMOVE_FILE)
INSTRUMENT_PLACEHOLDER = "{instrument}"  # in a template's path: the instrument's name in lower case
PROVENANCE_FORMAT = 1


@dataclass(frozen=True)
class RenderedSettings:
    """One instrument's rendered settings tree and where every byte of it came from."""

    files: dict[str, bytes]  # posix relpath -> content, including the version and provenance files
    provenance: dict[str, Any]
    sha256: str  # manifest_digest over every file (the value health checks compare)
    version: int
    dirty: bool

    def manifest(self) -> dict[str, str]:
        return {rel: sha256_bytes(data) for rel, data in self.files.items()}


def parse_version(data: bytes | None, *, source: str) -> int:
    """The settings format version held by a version file."""
    if data is None:
        raise InputError(f"the settings version file {VERSION_FILE} is missing", file=source,
                         fix=f"add {VERSION_FILE} holding the format version number")
    text = data.decode("utf-8", "replace").strip()
    if not text.isdigit():
        raise InputError("not a settings format version", file=f"{source}:{VERSION_FILE}", value=text,
                         fix="write a single whole number such as 3")
    return int(text)


def _defined(value: Any) -> Any:
    """Filters see StrictUndefined as a value: make them fail the way a plain {{ missing }} does."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def _python_literal(value: Any) -> str:
    value = _defined(value)
    if not isinstance(value, str | int | float | bool | type(None)):
        raise InputError("only strings, numbers, booleans and null can be written into Python",
                         value=value, fix="give the variable a plain value")
    return repr(value)


def _environment(sources: dict[str, bytes], prefix: str) -> jinja2.Environment:
    def load(name: str) -> tuple[str, str, Any] | None:
        if name not in sources:
            return None
        return sources[name].decode("utf-8"), f"{prefix}/{name}", lambda: True

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, auto_reload=False)
    env.filters["xml"] = lambda v: xml_escape(str(_defined(v)), {'"': "&quot;"})
    env.filters["json"] = lambda v: json.dumps(_defined(v), sort_keys=True, ensure_ascii=False)
    env.filters["pyrepr"] = _python_literal
    return env


def _template_line(exc: BaseException, prefix: str) -> tuple[str | None, int | None]:
    """The template file and line a rendering error happened on (Jinja maps its frames back to them)."""
    found: tuple[str | None, int | None] = (None, None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(prefix + "/"):
            found = (frame.filename, frame.lineno)
    return found


def _output_path(rel: str, instrument: str) -> str:
    out = rel.removesuffix(".j2").replace(INSTRUMENT_PLACEHOLDER, instrument.lower())
    return check_relpath(out, field="template path", file=rel)


def _is_partial(rel: str) -> bool:
    """Files or folders starting with '_' are only included by other templates, never rendered alone."""
    return any(part.startswith("_") for part in PurePosixPath(rel).parts)


def render_templates(sources: Mapping[str, bytes], *, instrument: str, variables: Mapping[str, Any],
                     prefix: str = TEMPLATES_DIR) -> dict[str, bytes]:
    """Render a template tree ({relpath: source}) for one instrument: ``*.j2`` through Jinja2, the rest as is.

    A missing variable or a template mistake is an InputError naming the template, the line and the
    instrument.
    """
    env = _environment(dict(sources), prefix)
    out: dict[str, bytes] = {}
    for rel in sorted(sources):
        if _is_partial(rel):
            continue
        target = _output_path(rel, instrument)
        if target in out:
            raise InputError(f"two templates render to {target}", file=f"{prefix}/{rel}",
                             fix="rename one of them")
        if not rel.endswith(".j2"):
            out[target] = bytes(sources[rel])
            continue
        try:
            text = env.get_template(rel).render(dict(variables))
        except jinja2.TemplateSyntaxError as exc:
            where = f"{exc.filename or prefix + '/' + rel}:{exc.lineno}"
            raise InputError(f"template syntax error: {exc.message} (rendering for instrument {instrument})",
                             file=where, fix="correct the template") from None
        except jinja2.UndefinedError as exc:
            tfile, line = _template_line(exc, prefix)
            where = f"{tfile or prefix + '/' + rel}:{line if line is not None else '?'}"
            m = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)' is undefined", str(exc))
            name = m.group(1) if m else None
            raise InputError(
                f"undefined variable: {exc.message} (line {line}, rendering for instrument {instrument})",
                file=where, field=f"variables.{name}" if name else None,
                fix=(f"define '{name}' under variables: in instruments/fleet/{instrument}.yaml, or give the "
                     f"template a default with | default(...) if one is right for every instrument")
                if name else "define the missing variable for this instrument") from None
        except (TypeError, ValueError, ArithmeticError, jinja2.TemplateError) as exc:
            tfile, line = _template_line(exc, prefix)
            raise InputError(f"rendering failed: {exc} (rendering for instrument {instrument})",
                             file=f"{tfile or prefix + '/' + rel}:{line if line is not None else '?'}",
                             fix="check the instrument's variables and the template") from None
        out[target] = text.encode("utf-8")
    return out


def _repo_name(repo: Path) -> str:
    """How provenance names a repository: its origin URL when it has one, else its folder."""
    url = gitrepo.run_git(repo, "config", "--get", "remote.origin.url", check=False).decode().strip()
    return url or str(Path(repo).resolve())


def _read_source(repo: Path, ref: str, subdir: str, allow_dirty: bool,
                 what: str) -> tuple[dict[str, bytes], str | None, list[str]]:
    """Files under ``subdir`` of ``repo`` at ``ref``, the commit, and the dirty paths that were used.

    Uncommitted changes only matter when ``ref`` is the commit checked out; then they are refused, or with
    ``allow_dirty`` the working tree itself is read (and the caller marks the output dirty).
    """
    repo = Path(repo)
    if not gitrepo.is_repo(repo):
        if not allow_dirty:
            raise InputError(f"{what} is not in a git repository", file=str(repo),
                             fix="commit it to git (settings are rendered from git), or pass --allow-dirty")
        folder = repo / subdir if subdir else repo
        return gitrepo.read_dir(folder), None, ["(not a git repository)"]
    top = gitrepo.toplevel(repo)
    rel_sub = (repo.resolve() / subdir).relative_to(top.resolve()).as_posix() if subdir else \
        repo.resolve().relative_to(top.resolve()).as_posix()
    rel_sub = "" if rel_sub == "." else rel_sub
    commit = gitrepo.resolve_commit(top, ref)
    dirty: list[str] = []
    if commit == gitrepo.head_commit(top):
        dirty = gitrepo.dirty_paths(top, [rel_sub or "."])
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:8]) + (" ..." if len(dirty) > 8 else "")
        raise InputError(f"{what} has uncommitted changes: {shown}", file=str(top / rel_sub),
                         fix="commit (or stash) them, or pass --allow-dirty to render the working tree "
                             "(the output is then marked dirty)")
    if dirty:
        return gitrepo.read_dir(top / rel_sub), commit, dirty
    return gitrepo.read_tree(top, commit, rel_sub), commit, []


def templates_version(repo: Path, ref: str, templates_dir: str = TEMPLATES_DIR) -> int:
    """The settings format of the templates in ``templates_dir`` at ``ref`` (uncommitted edits count: this
    answers what a render would find)."""
    sources, _, _ = _read_source(Path(repo), ref, templates_dir, True, "the settings templates")
    return parse_version(sources.get(VERSION_FILE), source=f"{repo}/{templates_dir}@{ref}")


def _read_overlay(settings_repo: Path, vm: str, allow_dirty: bool) -> tuple[dict[str, bytes], str, list[str]]:
    """The files of the instrument's branch (named after its VM) in the external settings repository."""
    repo = Path(settings_repo)
    if not gitrepo.is_repo(repo):
        raise InputError("the settings repository is not a git repository", file=str(repo),
                         field="settings_repo", fix="point settings_repo in instruments/defaults.yaml at a clone")
    if not gitrepo.branch_exists(repo, vm):
        raise InputError(f"the settings repository has no branch {vm}", file=str(repo), field="branch",
                         value=vm, fix=f"create it: git -C {repo} branch {vm} <base> (one branch per VM)")
    checked_out = vm in gitrepo.checked_out_branches(repo)
    if checked_out and gitrepo.resolve_commit(repo, "HEAD") == gitrepo.resolve_commit(repo, f"refs/heads/{vm}"):
        dirty = gitrepo.dirty_paths(gitrepo.toplevel(repo), ["."])
        if dirty and not allow_dirty:
            raise InputError(f"branch {vm} of the settings repository has uncommitted changes: "
                             + ", ".join(dirty[:8]), file=str(repo),
                             fix="commit them, or pass --allow-dirty (the output is then marked dirty)")
        if dirty:
            return gitrepo.read_dir(gitrepo.toplevel(repo)), gitrepo.resolve_commit(repo, f"refs/heads/{vm}"), dirty
    commit = gitrepo.resolve_commit(repo, f"refs/heads/{vm}")
    return gitrepo.read_tree(repo, commit), commit, []


def apply_overlay(rendered: dict[str, bytes], overlay: Mapping[str, bytes], *, version: int,
                  source: str) -> dict[str, bytes]:
    """Lay an instrument branch over the rendered files: its files win, its remove list drops files."""
    over_version = parse_version(overlay.get(VERSION_FILE), source=source)
    if over_version != version:
        raise InputError(f"the instrument's settings branch is at format version {over_version}, the templates "
                         f"at {version}", file=source, field=VERSION_FILE, value=over_version,
                         fix="run `invoke migrate --instrument=<name>` to bring the branch to the same version")
    out = dict(rendered)
    for line in overlay.get(REMOVE_FILE, b"").decode("utf-8").splitlines():
        rel = line.strip()
        if rel and not rel.startswith("#"):
            out.pop(check_relpath(rel, field=REMOVE_FILE, file=source), None)
    for rel, data in overlay.items():
        if rel in OVERLAY_META:
            continue
        if rel in (PROVENANCE_FILE, MANIFEST_FILE):
            raise InputError(f"{rel} is written by imaging and cannot come from a settings branch", file=source,
                             field=rel, fix=f"delete {rel} from the branch")
        out[check_relpath(rel, field="path", file=source)] = data
    return out


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_variables(variables: Mapping[str, Any], instrument: str) -> None:
    """Values land in one-line settings (ini keys, KEY=value lines, XML attributes): no line breaks or other
    control characters, and only plain types, so no file format can be broken by a value."""
    for name, value in variables.items():
        where = {"file": f"instruments/fleet/{instrument}.yaml", "field": f"variables.{name}"}
        if isinstance(value, str) and _CONTROL.search(value):
            raise InputError("line breaks and control characters are not allowed in a settings variable",
                             value=value, fix="write the value on one line", **where)
        if not isinstance(value, str | int | float | bool | type(None)):
            raise InputError(f"a settings variable must be text, a number or true/false, not a "
                             f"{type(value).__name__}", fix="give a plain value", **where)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def render_settings(*, repo: Path, instrument: str, vm: str, variables: Mapping[str, Any], ref: str = "HEAD",
                    settings_repo: Path | None = None, allow_dirty: bool = False,
                    templates_dir: str = TEMPLATES_DIR,
                    overlay: Mapping[str, bytes] | None = None,
                    variables_dirty: Sequence[str] = ()) -> RenderedSettings:
    """Render one instrument's settings from ``templates_dir`` of ``repo`` at ``ref``.

    ``variables`` holds the instrument's variables plus the builtins instrument, vm, host, group, release.
    Refuses uncommitted template changes unless ``allow_dirty`` (then the working tree is used and the
    result is marked dirty). ``overlay`` replaces the instrument branch by files held in memory (a dry run
    of migrations that were not committed); such output is marked dirty, as no commit holds it.
    ``variables_dirty`` names the uncommitted inventory files the variables came from: the output is then
    marked dirty too (no commit holds those values).
    """
    sources, commit, dirty = _read_source(Path(repo), ref, templates_dir, allow_dirty, "the settings templates")
    if not sources:
        raise InputError(f"no settings templates found at {ref}", file=str(Path(repo) / templates_dir),
                         fix=f"commit the template set to {templates_dir}/")
    version = parse_version(sources.get(VERSION_FILE), source=f"{repo}/{templates_dir}")
    check_variables(variables, instrument)
    values = {**dict(variables), "instrument": instrument, "vm": vm}
    files = render_templates(sources, instrument=instrument, variables=values, prefix=templates_dir)
    overlay_info = None
    if overlay is not None:
        files = apply_overlay(files, overlay, version=version, source=f"{vm} (in memory)")
        overlay_info = {"repo": None, "branch": vm, "commit": None, "dirty_paths": ["(in memory)"]}
        dirty = dirty + [f"{vm}:(in memory)"]
    elif settings_repo is not None:
        branch_files, ocommit, odirty = _read_overlay(Path(settings_repo), vm, allow_dirty)
        files = apply_overlay(files, branch_files, version=version, source=f"{settings_repo}@{vm}")
        overlay_info = {"repo": _repo_name(Path(settings_repo)), "branch": vm, "commit": ocommit,
                        "dirty_paths": odirty}
        dirty = dirty + [f"{vm}:{p}" for p in odirty]
    dirty = dirty + [f"inventory:{p}" for p in variables_dirty]
    files.pop(PROVENANCE_FILE, None)
    files.pop(MANIFEST_FILE, None)
    provenance = {
        "format": PROVENANCE_FORMAT,
        "instrument": instrument,
        "vm": vm,
        "repo": _repo_name(Path(repo)) if commit else str(Path(repo).resolve()),
        "ref": ref,
        "commit": commit,
        "templates_dir": templates_dir,
        "templates": {rel: sha256_bytes(data) for rel, data in sorted(sources.items())},
        "settings_repo": overlay_info,
        "variables": _jsonable(values),
        "version": version,
        "dirty": bool(dirty),
        "dirty_paths": dirty,
        "files": {rel: sha256_bytes(data) for rel, data in sorted(files.items())},
    }
    files[PROVENANCE_FILE] = (json.dumps(provenance, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    files = dict(sorted(files.items()))
    digest = manifest_digest({rel: sha256_bytes(data) for rel, data in files.items()})
    return RenderedSettings(files=files, provenance=provenance, sha256=digest, version=version, dirty=bool(dirty))


def rerender_from_provenance(repo: Path, provenance: Mapping[str, Any],
                             settings_repo: Path | None = None) -> dict[str, bytes] | None:
    """Reproduce exactly what was deployed, from the provenance file found on a Settings volume.

    Returns None when that is impossible (a dirty render, a commit no longer in the repository, an overlay
    branch that moved on). Used to show drift as a diff rather than as bare hashes.
    """
    if provenance.get("dirty") or not provenance.get("commit"):
        return None
    over = provenance.get("settings_repo")
    try:
        variables = dict(provenance.get("variables") or {})
        sources = gitrepo.read_tree(gitrepo.toplevel(Path(repo)), provenance["commit"],
                                    str(provenance.get("templates_dir", TEMPLATES_DIR)))
        files = render_templates(sources, instrument=str(provenance["instrument"]), variables=variables,
                                 prefix=str(provenance.get("templates_dir", TEMPLATES_DIR)))
        if over:
            if settings_repo is None:
                return None
            overlay = gitrepo.read_tree(Path(settings_repo), over["commit"])
            files = apply_overlay(files, overlay, version=int(provenance["version"]), source=str(settings_repo))
    except (gitrepo.GitError, InputError, KeyError, ValueError):
        return None
    expected = provenance.get("files") or {}
    if {rel: sha256_bytes(d) for rel, d in files.items()} != expected:
        return None
    return files
