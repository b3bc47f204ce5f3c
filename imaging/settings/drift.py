"""Drift: settings changed on an instrument since they were deployed, found before anything replaces them.

Before a reimage writes new settings, the provider reads the Settings volume and the manifest written when
it was deployed. :func:`detect_drift` compares them (pure). If anything changed, the reimage stops with a
:class:`DriftFound` showing the diff; with ``--capture-drift`` the changes are first saved, as a commit on the
instrument's settings branch (:func:`capture_to_branch`) or, without a settings repository, as files on the
Var volume (:func:`drift_files_for_var`). Settings changed on an instrument are never silently overwritten.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core import git as gitrepo
from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_bytes
from imaging.core.quoting import check_name, check_relpath

MANIFEST_FILE = ".imaging/manifest.json"  # the provider's record of what it deployed; not a settings file
VERSION_FILE = ".imaging/settings-version"
REMOVE_FILE = ".imaging/remove.txt"
VAR_DRIFT_DIR = "settings-drift"  # on the Var volume: C:\Instrument\Var\settings-drift\<stamp>\
MAX_DIFF_LINES = 400


def _text(data: bytes | None) -> str | None:
    if data is None or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def file_diff(rel: str, before: bytes | None, after: bytes | None) -> str:
    """A unified diff of one file (``a/rel`` -> ``b/rel``), or a one-line note for binary content."""
    a, b = _text(before), _text(after)
    if (before is not None and a is None) or (after is not None and b is None):
        return f"Binary file {rel} differs ({_short(before)} -> {_short(after)})\n"
    lines = difflib.unified_diff((a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
                                 fromfile="/dev/null" if before is None else f"a/{rel}",
                                 tofile="/dev/null" if after is None else f"b/{rel}")
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _short(data: bytes | None) -> str:
    return "absent" if data is None else f"sha256 {sha256_bytes(data)[:12]}, {len(data)} bytes"


def tree_diff(before: Mapping[str, bytes], after: Mapping[str, bytes]) -> str:
    """Unified diffs of every file that differs between two trees, in path order."""
    return "".join(file_diff(rel, before.get(rel), after.get(rel))
                   for rel in sorted(set(before) | set(after)) if before.get(rel) != after.get(rel))


@dataclass(frozen=True)
class FileDrift:
    path: str
    kind: str  # changed | added | removed
    deployed_sha256: str | None
    current_sha256: str | None
    diff: str  # a unified diff when the deployed content is known, else a note with both hashes


@dataclass(frozen=True)
class DriftReport:
    changed: list[FileDrift] = field(default_factory=list)
    added: list[FileDrift] = field(default_factory=list)
    removed: list[FileDrift] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.changed or self.added or self.removed)

    @property
    def files(self) -> list[FileDrift]:
        return sorted(self.changed + self.added + self.removed, key=lambda f: f.path)

    def summary(self) -> str:
        if self.clean:
            return "no drift: the Settings volume is as deployed"
        parts = [f"{len(x)} {name}" for name, x in (("changed", self.changed), ("added", self.added),
                                                    ("removed", self.removed)) if x]
        return "settings changed on the instrument since deployment: " + ", ".join(parts)

    def render(self, max_lines: int = MAX_DIFF_LINES) -> str:
        """The summary, one line per file, and the diffs (cut after ``max_lines`` lines)."""
        lines = [self.summary()]
        lines += [f"  {f.kind:8} {f.path}" for f in self.files]
        diff = "".join(f.diff for f in self.files).splitlines()
        if diff:
            lines.append("")
            lines += diff[:max_lines]
            if len(diff) > max_lines:
                lines.append(f"... {len(diff) - max_lines} more diff lines")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {kind: [{"path": f.path, "deployed_sha256": f.deployed_sha256, "current_sha256": f.current_sha256}
                       for f in getattr(self, kind)] for kind in ("changed", "added", "removed")}


class DriftFound(ImagingError):
    """The Settings volume was changed on the instrument; replacing it now would lose those changes."""

    def __init__(self, instrument: str, report: DriftReport) -> None:
        self.instrument, self.report = instrument, report
        super().__init__(f"{instrument}: {report.render()}\nNothing was changed. Save these changes with "
                         f"--capture-drift (to the instrument's settings branch, or to Var\\{VAR_DRIFT_DIR}) and "
                         "run again, or put them into the templates first")


def _manifest_files(manifest: Mapping[str, Any]) -> dict[str, str]:
    files = manifest.get("files", manifest)
    if not isinstance(files, Mapping) or not all(isinstance(v, str) for v in files.values()):
        raise InputError("the deployed settings manifest has no file list", field="files",
                         fix="the volume's .imaging/manifest.json is damaged; compare against the backup by hand")
    return {str(k): str(v) for k, v in files.items()}


def detect_drift(deployed_manifest: Mapping[str, Any], current_files: Mapping[str, bytes], *,
                 deployed_files: Mapping[str, bytes] | None = None,
                 current_hashes: Mapping[str, str] | None = None) -> DriftReport:
    """Compare what is on the Settings volume now with the manifest of what was deployed. Pure.

    ``deployed_manifest`` is the volume's ``.imaging/manifest.json`` ({"files": {relpath: sha256}} or the
    bare mapping). ``deployed_files``, when known (see ``settings.rerender_from_provenance``), turns hash
    differences into unified diffs; a deployed file whose content does not match its hash is not used.
    ``current_hashes`` are the files too large to have been read: compared by their sha256 alone.
    """
    deployed = {k: v for k, v in _manifest_files(deployed_manifest).items() if k != MANIFEST_FILE}
    current = {k.replace("\\", "/"): v for k, v in current_files.items() if k.replace("\\", "/") != MANIFEST_FILE}
    large = {k.replace("\\", "/"): v for k, v in (current_hashes or {}).items() if k not in current}
    known = {rel: data for rel, data in (deployed_files or {}).items()
             if rel in deployed and sha256_bytes(data) == deployed[rel]}
    report = DriftReport()
    for rel in sorted(set(deployed) | set(current) | set(large)):
        now = sha256_bytes(current[rel]) if rel in current else large.get(rel)
        was = deployed.get(rel)
        if now == was:
            continue
        if rel in large:
            diff = (f"Large file {rel} differs (sha256 {(was or 'absent')[:12]} -> {str(now)[:12]}); it is larger "
                    "than what is read back, so only its hash was compared\n")
        elif rel in known or was is None:
            diff = file_diff(rel, known.get(rel), current.get(rel))
        else:
            diff = _unknown_diff(rel, was, current.get(rel))
        item = FileDrift(path=rel, kind="added" if was is None else "removed" if now is None else "changed",
                         deployed_sha256=was, current_sha256=now, diff=diff)
        {"added": report.added, "removed": report.removed, "changed": report.changed}[item.kind].append(item)
    return report


def _unknown_diff(rel: str, was: str, now: bytes | None) -> str:
    """The deployed content is not known (only its hash): show the current content as all new."""
    head = f"--- a/{rel} (as deployed: sha256 {was[:12]}, content not available)\n"
    if now is None:
        return head + "+++ /dev/null (removed on the instrument)\n"
    text = _text(now)
    if text is None:
        return head + f"+++ b/{rel} (binary, {_short(now)})\n"
    return head + f"+++ b/{rel}\n" + "".join(f"+{line}\n" for line in text.splitlines())


def drift_stamp(when: datetime | None = None) -> str:
    """A folder name for one capture, e.g. 20261121T193000Z (UTC, sortable, safe on Windows)."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def drift_files_for_var(report: DriftReport, current_files: Mapping[str, bytes], *, instrument: str,
                        stamp: str) -> dict[str, bytes]:
    """The files to write on the Var volume to keep the drift: {posix relpath under Var: bytes}. Pure.

    Layout: ``settings-drift/<stamp>/files/<relpath>`` for every changed or added file as found on the
    instrument, ``drift.json`` (what changed, with hashes; removed files listed) and ``drift.diff``.
    """
    check_name(stamp, field="stamp")
    base = f"{VAR_DRIFT_DIR}/{stamp}"
    out: dict[str, bytes] = {}
    for f in report.changed + report.added:
        out[f"{base}/files/{check_relpath(f.path, field='path')}"] = bytes(current_files[f.path])
    body = {"instrument": instrument, "stamp": stamp, "summary": report.summary(), **report.to_dict()}
    out[f"{base}/drift.json"] = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    out[f"{base}/drift.diff"] = "".join(f.diff for f in report.files).encode("utf-8")
    return dict(sorted(out.items()))


def capture_to_branch(settings_repo: Path, branch: str, report: DriftReport, current_files: Mapping[str, bytes], *,
                      instrument: str, deployed_version: int, stamp: str) -> str:
    """Commit the instrument's changes to its settings branch, so the next render reproduces them.

    Changed and added files are written to the branch; files removed on the instrument are deleted from the
    branch and listed in ``.imaging/remove.txt``. The branch is created (at ``deployed_version``) if missing;
    a branch already at another format version is refused (capture before migrating). Files under
    ``.imaging/`` are written by imaging and are not captured. Returns the new commit.
    """
    if report.clean:
        raise InputError("there is no drift to capture", field="--capture-drift", fix="run without it")
    repo = Path(settings_repo)
    existing: dict[str, bytes] = {}
    if gitrepo.branch_exists(repo, branch):
        existing = gitrepo.read_tree(repo, f"refs/heads/{branch}")
        raw = existing.get(VERSION_FILE, b"").decode("utf-8", "replace").strip()
        if raw != str(deployed_version):
            raise InputError(f"branch {branch} is at settings version {raw or '(none)'} but the instrument runs "
                             f"version {deployed_version}", file=str(repo), field=VERSION_FILE, value=raw,
                             fix="capture the drift before migrating the branch, or move it to a new branch by hand")
    changes: dict[str, bytes | None] = {VERSION_FILE: f"{deployed_version}\n".encode()}
    skipped = []
    for f in report.changed + report.added:
        if f.path.startswith(".imaging/"):
            skipped.append(f.path)
            continue
        changes[f.path] = bytes(current_files[f.path])
    removed = {f.path for f in report.removed if not f.path.startswith(".imaging/")}
    listed = {line.strip() for line in existing.get(REMOVE_FILE, b"").decode("utf-8").splitlines()
              if line.strip() and not line.startswith("#")}
    listed = (listed | removed) - {f.path for f in report.changed + report.added}
    for rel in removed:
        if rel in existing:
            changes[rel] = None
    if listed:
        changes[REMOVE_FILE] = ("# files the instrument does without (captured drift)\n"
                                + "".join(f"{r}\n" for r in sorted(listed))).encode()
    elif REMOVE_FILE in existing:
        changes[REMOVE_FILE] = None
    lines = [f"Capture settings drift found on {instrument} ({stamp})", ""]
    lines += [f"{f.kind}: {f.path}" for f in report.files]
    if skipped:
        lines += ["", "not captured (written by imaging): " + ", ".join(skipped)]
    return gitrepo.commit_files(repo, branch, changes, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class DriftCapture:
    """Where captured drift went: a commit on the branch, or files for the provider to write on Var."""

    commit: str | None
    var_files: dict[str, bytes]


def capture_drift(report: DriftReport, current_files: Mapping[str, bytes], *, instrument: str, vm: str,
                  settings_repo: Path | None, deployed_version: int, stamp: str | None = None) -> DriftCapture:
    """Save drift before it is overwritten: to branch ``vm`` of the settings repository if there is one,
    else as files for ``Var\\settings-drift\\<stamp>\\`` (which the provider writes before going on)."""
    stamp = stamp or drift_stamp()
    unread = [f.path for f in report.changed + report.added if f.path not in current_files]
    if unread:
        raise InputError(f"{instrument}: {', '.join(unread)} changed on the instrument and is too large to be read "
                         "back, so it cannot be captured", field="--capture-drift",
                         fix="copy it off the instrument by hand (into its settings branch, or onto Var), then run "
                             "again; nothing was changed")
    if settings_repo is not None:
        return DriftCapture(commit=capture_to_branch(settings_repo, vm, report, current_files, instrument=instrument,
                                                     deployed_version=deployed_version, stamp=stamp), var_files={})
    return DriftCapture(commit=None, var_files=drift_files_for_var(report, current_files, instrument=instrument,
                                                                   stamp=stamp))
