"""Release management wired to a Context: the release list, promote, revoke, prune, label warnings.

The deciding parts are pure (:mod:`imaging.ops.promotion`, :mod:`imaging.plans.retention`); this module gathers
their inputs from the inventory, the journal, the store and the build records, and carries out the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.core.errors import ImagingError, InputError
from imaging.core.git import CommitResult, commit_file
from imaging.core.stamps import who
from imaging.model import layout
from imaging.model.releases import ReleaseDefinition, newest_first
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import desired_release, running_release, who_runs
from imaging.ops.promotion import (
    Promotion,
    Revoke,
    canaries,
    commit_labels,
    plan_promotion,
    revoke_release,
    write_labels,
)
from imaging.ops.stage import has_sample, not_staged, unpublished
from imaging.plans.retention import Decision, ReleaseImages, select, usage
from imaging.state.journal import OK, RUNNING


@dataclass(frozen=True)
class ReleaseRow:
    """One release along the whole path: defined, built, published, staged, deployable, running."""

    release: ReleaseDefinition
    labels: list[str]        # "group:label", with "!" when the release is revoked
    running_on: list[str]
    built: dict[str, str]    # image name -> sha256, or why it is not built
    published: list[str]     # the shares (as hosts.yaml names them) holding every image
    staged_on: list[str]     # hosts holding every image, verified ("HOST?" where only the host can tell)
    deployable: str          # "yes", or why not and what to run


def _built(ctx: Context, rel: ReleaseDefinition) -> dict[str, str]:
    out = {}
    for ref, kind in ((rel.os_template, "os-template"), (rel.apps, "apps")):
        if ctx.store.exists(ref.name):
            out[ref.name] = ctx.store.get(ref.name).sha256
        elif has_sample(ctx, ref.name, kind, rel):
            out[ref.name] = "sample, built on first use"
        else:
            out[ref.name] = "NOT BUILT"
    return out


def release_rows(ctx: Context) -> list[ReleaseRow]:
    """Every release, newest first: labels, images built (sha256), published, staged, deployable, running."""
    runs = who_runs(ctx)
    rows = []
    for rel in newest_first(ctx.releases.values()):
        labels = [f"{g}:{label}" + ("!" if rel.revoked else "") for g, m in sorted(ctx.labels.items())
                  for label, rid in m.items() if rid == rel.id]
        built = _built(ctx, rel)
        missing = [n for n, v in built.items() if v == "NOT BUILT"]
        published: set[str] = set()
        staged: list[str] = []
        if not missing:
            for host in sorted(ctx.inventory.hosts):
                share = ctx.inventory.hosts[host].share
                if ctx.providers.share_folder(host, share + "\\x") is not None and not unpublished(ctx, rel.id, host):
                    published.add(share)
                have = not_staged(ctx, rel.id, host)
                if have is None:
                    staged.append(f"{host}?")
                elif not have:
                    staged.append(host)
        if rel.revoked:
            deployable = f"no: revoked ({rel.revoked.reason})"
        elif missing:
            deployable = (f"no: {', '.join(missing)} not in the store (`invoke build-apps` / `invoke build-template`, "
                          "or the build host's import)")
        else:
            deployable = "yes"
        rows.append(ReleaseRow(rel, labels, runs.get(rel.id, []), built, sorted(published), staged, deployable))
    return rows


# --- promote ---------------------------------------------------------------------------------------------

def promote(ctx: Context, *, release: str, label: str, group: str, force: bool = False,
            dry_run: bool = True) -> tuple[Promotion, CommitResult | None]:
    members = {i.name for i in ctx.inventory.instruments.values() if i.group == group}
    evidence = canaries(ctx.journal.operations(), release=release, members=members)
    promo = plan_promotion(release=release, label=label, group=group, releases=ctx.releases, labels=ctx.labels,
                           groups=ctx.inventory.groups, canary=evidence, force=force)
    if dry_run or not promo.moves:
        return promo, None
    write_labels(ctx.paths.releases, promo.moves)
    return promo, commit_labels(ctx.paths.root, ctx.paths.releases, promo)


# --- revoke ----------------------------------------------------------------------------------------------

def revoke(ctx: Context, *, release: str, reason: str, dry_run: bool = True
           ) -> tuple[Revoke | None, CommitResult | None, list[str]]:
    """Mark ``release`` bad. Returns the revocation, the commit, and the labels still pointing to it."""
    if release not in ctx.releases:
        raise InputError("no such release", field="--release", value=release,
                         fix=f"use one of {', '.join(sorted(ctx.releases))}")
    pointing = [f"{g}:{lab}" for g, m in sorted(ctx.labels.items()) for lab, r in sorted(m.items()) if r == release]
    if dry_run:
        if ctx.releases[release].revoked:
            raise InputError("already revoked", field="--release", value=release, fix="nothing to do")
        if not reason.strip():
            raise InputError("a reason is required", field="--reason", fix="say why the release is bad")
        return None, None, pointing
    rev, path = revoke_release(ctx.paths.releases, release, reason=reason, who=who())
    return rev, commit_file(ctx.paths.root, path, rev.message()), pointing


def revoked_labels(ctx: Context) -> list[str]:
    """Labels that point to revoked releases, as 'group:label -> release (reason)'."""
    out = []
    for g, m in sorted(ctx.labels.items()):
        for lab, rid in sorted(m.items()):
            rel = ctx.releases.get(rid)
            if rel is not None and rel.revoked:
                out.append(f"{g}:{lab} -> {rid} (revoked: {rel.revoked.reason})")
    return out


# --- prune -----------------------------------------------------------------------------------------------

@dataclass
class PruneReport:
    decisions: list[Decision]
    applied: bool
    removed_blobs: list[str] = field(default_factory=list)
    unstaged: list[str] = field(default_factory=list)

    @property
    def to_remove(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]


def _uses(ctx: Context) -> Any:
    running: dict[str, str | None] = {}
    desired: dict[str, str | None] = {}
    rollback: dict[str, list[str]] = {}
    for inst in ctx.inventory.instruments.values():
        running[inst.name] = running_release(ctx, inst)
        try:
            desired[inst.name] = desired_release(ctx, inst)
        except ImagingError:
            desired[inst.name] = None
        points: list[str] = []
        for op in ctx.journal.operations(instrument=inst.name):
            # The last finished deploy can be rolled back to where it came from; an unfinished one may need
            # either end.
            if op.status == RUNNING:
                points += [r for r in (op.from_release, op.to_release) if r]
        last = ctx.journal.last(inst.name, kinds=("reimage", "rollback"), statuses=(OK,))
        if last and last.from_release:
            points.append(last.from_release)
        rollback[inst.name] = points
    return usage(labels=ctx.labels, running=running, desired=desired, rollback=rollback)


def prune_decisions(ctx: Context) -> list[Decision]:
    rels = [ReleaseImages(r.id, r.is_revoked, {"apps": r.apps.name, "os-template": r.os_template.name})
            for r in ctx.releases.values()]
    builds = {(rec.kind, rec.name): rec.status for rec in ctx.builds.all()}
    stored = set()
    for m in ctx.store.list():
        if ctx.store.blob_path(m.sha256).exists():
            stored.add(m.name)
    return select(releases=rels, builds=builds, stored=stored, used=_uses(ctx))


def prune(ctx: Context, *, apply: bool = False) -> PruneReport:
    """Dry run by default. With ``apply``: decide again, then remove staged copies (by steps) and blobs."""
    decisions = prune_decisions(ctx)
    report = PruneReport(decisions, applied=apply)
    if not apply:
        return report
    for d in report.to_remove:
        sha = ctx.store.get(d.artifact).sha256
        for host in ctx.inventory.hosts.values():
            step = Step("remove_image", host.name, {"path": layout.image_path(host, d.artifact, sha), "sha256": sha},
                        f"remove the staged image {d.artifact} from {host.name} (refused while a disk uses it)")
            try:
                res = ctx.providers.run(step)
            except ImagingError as exc:
                raise ImagingError(f"prune stopped: {exc}; nothing more was removed") from None
            if res.get("changed"):
                report.unstaged.append(f"{host.name}:{d.artifact}")
        if ctx.store.prune(d.artifact):
            report.removed_blobs.append(d.artifact)
    return report
