"""Moving labels (promotion) and revoking releases: the two edits release management makes in git.

Both rewrite their YAML file minimally (one value line changed or a few lines added, comments kept),
check that the result loads to exactly what was intended, and commit that file alone when they can.
Deciding is pure (:func:`plan_promotion`); the edits and commits follow only when the decision allows it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from imaging.core.errors import InputError
from imaging.core.git import CommitResult, commit_file
from imaging.model.labels import KNOWN_LABELS, LABELS_FILE, load_labels
from imaging.model.releases import ReleaseDefinition, load_release
from imaging.state.journal import OK, Operation

DEPLOY_KINDS = ("reimage", "rollback")


@dataclass(frozen=True)
class Move:
    group: str
    label: str
    old: str | None
    new: str

    def describe(self) -> str:
        return f"{self.group}:{self.label} {self.old or '(unset)'} -> {self.new}"


@dataclass(frozen=True)
class Promotion:
    release: str
    group: str
    label: str
    moves: list[Move]
    canaries: list[str]
    forced: bool
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        moved = "; ".join(m.describe() for m in self.moves)
        canary = f"canary {', '.join(self.canaries)}" if self.canaries else "no canary (forced)"
        return f"promote {self.release} to {self.group}:{self.label} ({moved}; {canary})"


def canaries(operations: Iterable[Operation], *, release: str, members: set[str]) -> list[str]:
    """Instruments of the group that finished a deploy of ``release`` and did not roll it back afterwards:
    the evidence promotion needs. (One that moved on to a later release still counts: it ran this one.)"""
    ran: set[str] = set()
    for op in operations:  # oldest first
        if op.instrument not in members or op.status != OK:
            continue
        if op.kind == "rollback" and op.from_release == release and op.to_release != release:
            ran.discard(op.instrument)  # it went back: the release failed it
        elif op.kind in DEPLOY_KINDS and op.to_release == release:
            ran.add(op.instrument)
    return sorted(ran)


def plan_promotion(*, release: str, label: str, group: str, releases: dict[str, ReleaseDefinition],
                   labels: dict[str, dict[str, str]], groups: Iterable[str], canary: list[str],
                   force: bool = False) -> Promotion:
    """Which label lines change. Refuses unknown names, revoked releases, and (unless forced) a release
    with no successful canary in the group. Promoting to ``current`` moves the old current to ``previous``."""
    if label not in KNOWN_LABELS:
        raise InputError("unknown label", field="--label", value=label, fix=f"use one of {', '.join(KNOWN_LABELS)}")
    if label == "previous":
        raise InputError("'previous' moves by itself when 'current' is promoted", field="--label", value=label,
                         fix="promote to current, or edit releases/labels.yaml by hand with a review")
    groups = set(groups)
    if group not in groups:
        raise InputError("no such group", field="--group", value=group, fix=f"use one of {', '.join(sorted(groups))}")
    if release not in releases:
        raise InputError("no such release", field="--release", value=release,
                         fix=f"use one of {', '.join(sorted(releases))}")
    rel = releases[release]
    if rel.revoked:
        raise InputError(f"release {release} is revoked ({rel.revoked.reason}); it cannot be promoted",
                         field="--release", value=release, fix="promote a good release")
    if not canary and not force:
        raise InputError(f"release {release} has not been deployed successfully to any instrument of group "
                         f"{group} (no canary)", field="--release", value=release,
                         fix=f"reimage one instrument of {group} to {release} first, or pass --force")
    current = labels.get(group, {})
    old = current.get(label)
    moves: list[Move] = []
    notes: list[str] = []
    if old == release:
        notes.append(f"{group}:{label} already points to {release}; nothing to move")
        return Promotion(release, group, label, [], canary, force and not canary, notes)
    if label == "current" and old is not None:
        if old in releases and releases[old].revoked:  # a revoked release is never anyone's way back
            notes.append(f"{group}:current {old} is revoked, so it does not become previous: previous stays "
                         f"{current.get('previous') or '(unset)'}")
        else:
            moves.append(Move(group, "previous", current.get("previous"), old))
    moves.append(Move(group, label, old, release))
    return Promotion(release, group, label, moves, canary, force and not canary, notes)


# --- minimal YAML edits --------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:][^:#]*?)\s*:(?P<rest>.*)$")


def _set_label_line(lines: list[str], group: str, label: str, value: str) -> list[str]:
    """Set ``labels.<group>.<label>`` in the text, touching as few lines as possible."""
    top = next((i for i, ln in enumerate(lines) if re.match(r"^labels\s*:", ln)), None)
    if top is None:
        return [*lines, "labels:\n", f"  {group}:\n", f"    {label}: {value}\n"]
    end = next((i for i in range(top + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    group_at = None
    group_indent = ""
    for i in range(top + 1, end):
        m = _KEY_RE.match(lines[i])
        if m and m.group("key").strip().strip("'\"") == group and not m.group("rest").strip(" \t\n").strip():
            group_at, group_indent = i, m.group("indent")
            break
    if group_at is None:
        indent = "  "
        for i in range(top + 1, end):
            m = _KEY_RE.match(lines[i])
            if m:
                indent = m.group("indent")
                break
        insert = end
        while insert > top + 1 and not lines[insert - 1].strip():
            insert -= 1
        return [*lines[:insert], f"{indent}{group}:\n", f"{indent}  {label}: {value}\n", *lines[insert:]]
    block_end = end
    child_indent = group_indent + "  "
    for i in range(group_at + 1, end):
        ln = lines[i]
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        ind = len(ln) - len(ln.lstrip(" "))
        if ind <= len(group_indent):
            block_end = i
            break
        child_indent = " " * ind
        m = _KEY_RE.match(ln)
        if m and m.group("key").strip().strip("'\"") == label:
            found = re.search(r"\s+#.*$", m.group("rest").rstrip("\n"))
            comment = found.group(0) if found else ""
            newline = "\n" if ln.endswith("\n") else ""
            return [*lines[:i], f"{m.group('indent')}{label}: {value}{comment}{newline}", *lines[i + 1:]]
    insert = block_end
    while insert > group_at + 1 and not lines[insert - 1].strip():
        insert -= 1
    return [*lines[:insert], f"{child_indent}{label}: {value}\n", *lines[insert:]]


def write_labels(releases_dir: Path, moves: list[Move]) -> Path:
    """Apply ``moves`` to releases/labels.yaml, keeping every other line (and comments) as it was."""
    path = Path(releases_dir) / LABELS_FILE
    original = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = original.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    expected = load_labels(releases_dir)
    for mv in moves:
        lines = _set_label_line(lines, mv.group, mv.label, mv.new)
        expected.setdefault(mv.group, {})[mv.label] = mv.new
    text = "".join(lines)
    try:
        got = (yaml.safe_load(text) or {}).get("labels") or {}
        got = {str(g): {str(k): str(v) for k, v in (m or {}).items()} for g, m in got.items()}
    except (yaml.YAMLError, AttributeError) as exc:
        got = {"error": {"yaml": str(exc)}}
    if got != expected:
        raise InputError("could not edit the labels file safely (its layout is unusual); nothing was changed",
                         file=str(path), fix="edit it by hand, keeping one '<label>: <release>' line per label")
    path.write_text(text, encoding="utf-8")
    return path


def commit_labels(root: Path, releases_dir: Path, promotion: Promotion) -> CommitResult:
    return commit_file(root, Path(releases_dir) / LABELS_FILE, promotion.message())


# --- revoke ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Revoke:
    release: str
    reason: str
    when: datetime
    who: str

    def message(self) -> str:
        return f"revoke {self.release}: {self.reason}"


def revoke_release(releases_dir: Path, release: str, *, reason: str, who: str,
                   when: datetime | None = None) -> tuple[Revoke, Path]:
    """Add ``revoked: {reason, when, who}`` to ``releases/<id>.yaml`` (appended; the rest is untouched)."""
    path = Path(releases_dir) / f"{release}.yaml"
    if not path.is_file():
        raise InputError("no such release", field="--release", value=release,
                         fix=f"use a release from {releases_dir}")
    if not reason or not reason.strip():
        raise InputError("a reason is required", field="--reason", fix="say why, e.g. --reason='crashes on start'")
    rel = load_release(path)
    if rel.revoked:
        raise InputError(f"already revoked on {rel.revoked.when.isoformat()} by {rel.revoked.who}: "
                         f"{rel.revoked.reason}", file=str(path), field="revoked", fix="nothing to do")
    when = (when or datetime.now(UTC)).replace(microsecond=0)
    original = path.read_text(encoding="utf-8")
    block = yaml.safe_dump({"revoked": {"reason": reason.strip(), "when": when.isoformat(), "who": who}},
                           sort_keys=False, allow_unicode=True, width=1000)
    text = original + ("" if original.endswith("\n") else "\n") + block
    path.write_text(text, encoding="utf-8")
    try:
        check = load_release(path)
        if check.revoked is None or check.revoked.reason != reason.strip():
            raise InputError("the revocation did not read back", file=str(path))
    except InputError:
        path.write_text(original, encoding="utf-8")
        raise
    return Revoke(release, reason.strip(), when, who), path
