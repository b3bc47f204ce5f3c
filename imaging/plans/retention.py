"""Retention: which release images to keep and which to prune (pure), and pruning them (apply).

Per image kind (Apps, OS template) the two newest *good* releases are kept: a release is good for a kind
when it is not revoked and its image of that kind was built successfully (a stored image with no build
record at all, e.g. an imported one or a lab sample, counts as built). Failed or unfinished builds never
count towards the two. On top of that everything in use is kept: what any label points to, what any
instrument runs or wants, and what any rollback point would return to. Images that belong to no release
are kept too (a template waiting for its release). A revoked release's images go once nothing uses them.

Pruning removes the image bytes (the store's blob and the copies staged on hosts) but keeps the store's
manifest, moved aside, and the build record, so a pruned release can be rebuilt and checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from imaging.model.releases import ReleaseId

KINDS = ("apps", "os-template")
KEEP_NEWEST = 2


@dataclass(frozen=True)
class ReleaseImages:
    """One release as retention sees it: its id, whether it is revoked, and its image per kind."""

    id: str
    revoked: bool
    images: dict[str, str]  # kind -> artifact name


@dataclass(frozen=True)
class Usage:
    """Who uses which release: ``{release: [reasons]}`` such as 'label A:current', 'instrument ZOOM runs'."""

    uses: dict[str, list[str]] = field(default_factory=dict)

    def of(self, release: str) -> list[str]:
        return self.uses.get(release, [])


@dataclass(frozen=True)
class Decision:
    artifact: str
    kind: str
    keep: bool
    reasons: list[str]
    releases: list[str]


def usage(*, labels: dict[str, dict[str, str]], running: dict[str, str | None], desired: dict[str, str | None],
          rollback: dict[str, Iterable[str]]) -> Usage:
    """Gather the uses into one table (instrument -> release maps; rollback: instrument -> releases)."""
    uses: dict[str, list[str]] = {}
    for group, entries in sorted(labels.items()):
        for label, rel in sorted(entries.items()):
            uses.setdefault(rel, []).append(f"label {group}:{label}")
    for inst, rel in sorted(running.items()):
        if rel:
            uses.setdefault(rel, []).append(f"{inst} runs it")
    wanted: dict[str, list[str]] = {}
    for inst, rel in sorted(desired.items()):
        if rel:
            wanted.setdefault(rel, []).append(inst)
    for rel, insts in wanted.items():
        names = ", ".join(insts) if len(insts) <= 3 else f"{len(insts)} instruments ({', '.join(insts[:3])}, ...)"
        uses.setdefault(rel, []).append(f"wanted by {names}")
    for inst, rels in sorted(rollback.items()):
        for rel in sorted(set(rels)):
            uses.setdefault(rel, []).append(f"{inst} rollback point")
    return Usage(uses)


def select(*, releases: Iterable[ReleaseImages], builds: dict[tuple[str, str], str], stored: set[str],
           used: Usage, keep_newest: int = KEEP_NEWEST) -> list[Decision]:
    """Decide for every stored artifact whether it stays. ``builds`` maps (kind, artifact) to the build
    status (ok/failed/started); ``stored`` is the set of artifact names whose bytes are in the store."""
    rels = sorted(releases, key=lambda r: ReleaseId.parse(r.id), reverse=True)
    reasons: dict[str, list[str]] = {}
    owners: dict[str, list[str]] = {}
    kind_of: dict[str, str] = {}
    for kind in KINDS:
        newest: list[str] = []
        for r in rels:
            name = r.images.get(kind)
            if name is None:
                continue
            owners.setdefault(name, []).append(r.id)
            kind_of[name] = kind
            status = builds.get((kind, name))
            good = not r.revoked and name in stored and status in (None, "ok")
            if good and name not in newest and len(newest) < keep_newest:
                newest.append(name)
                reasons.setdefault(name, []).append(f"one of the {keep_newest} newest good {kind} images "
                                                    f"({r.id})")
            for use in used.of(r.id):
                reasons.setdefault(name, []).append(f"{r.id}: {use}")
    out = []
    for name in sorted(stored):
        kind = kind_of.get(name)
        if kind is None:
            out.append(Decision(name, "-", True, ["not part of any release"], []))
            continue
        why = reasons.get(name, [])
        if not why:
            revoked = [r.id for r in rels if r.images.get(kind) == name and r.revoked]
            status = builds.get((kind, name))
            if revoked and len(revoked) == len(owners[name]):
                why_not = ["revoked and unused"]
            elif status not in (None, "ok"):
                why_not = [f"its build is {status} and it is unused"]
            else:
                why_not = ["older than the newest good releases and unused"]
            out.append(Decision(name, kind, False, why_not, sorted(owners[name])))
        else:
            out.append(Decision(name, kind, True, why, sorted(owners[name])))
    return out
