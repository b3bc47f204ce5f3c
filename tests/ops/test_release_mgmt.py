"""Release management: labels and promotion (the canary rule), revoke, and retention (prune)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from imaging.core.config import Paths
from imaging.core.errors import ImagingError, InputError
from imaging.model.labels import load_labels
from imaging.model.releases import load_releases
from imaging.ops import publish as publishing
from imaging.ops import reimage as reimaging
from imaging.ops import releases as release_ops
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.ops.promotion import Move, plan_promotion, write_labels
from imaging.plans.retention import ReleaseImages, select, usage
from tests.cli.test_cli import inv
from tests.conftest import git

LABELS = """# Labels for these tests (the shipped file changes as releases are made).
labels:
  A:
    current: 2026C3.0
    previous: 2026C1.0
    qa: 2026C3.0
    recommended: 2026C3.0
  B:
    current: 2026C1.0  # ZOOM's group
    previous: 2025C5.0
    qa: 2026C3.0
    recommended: 2026C1.0
"""


@pytest.fixture
def labelled(project: Path) -> Path:
    """The project with a known labels file, committed."""
    (project / "releases" / "labels.yaml").write_text(LABELS)
    git(project, "commit", "-q", "-m", "test labels", "--", "releases/labels.yaml")
    return project


def ctx_for(project: Path) -> Context:
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (40, 30)
    return ctx


# --- labels file edits --------------------------------------------------------------------------------

def test_label_edit_keeps_comments_and_changes_only_the_moved_lines(tmp_path: Path) -> None:
    text = ("# header comment\nlabels:\n  A:\n    current: 2026C3.0  # set in January\n    previous: 2026C1.0\n"
            "  B:\n    current: 2026C1.0\n")
    (tmp_path / "labels.yaml").write_text(text)
    write_labels(tmp_path, [Move("A", "previous", "2026C1.0", "2026C3.0"), Move("A", "current", "2026C3.0", "2027C1.0"),
                            Move("B", "qa", None, "2027C1.0"), Move("C", "current", None, "2027C1.0")])
    new = (tmp_path / "labels.yaml").read_text()
    assert "# header comment" in new and "current: 2027C1.0  # set in January" in new
    assert load_labels(tmp_path) == {"A": {"current": "2027C1.0", "previous": "2026C3.0"},
                                     "B": {"current": "2026C1.0", "qa": "2027C1.0"}, "C": {"current": "2027C1.0"}}
    changed = [ln for ln in new.splitlines() if ln not in text.splitlines()]
    assert len(changed) == 5  # two values, the B:qa line, the C group and its line


def test_label_edit_refuses_a_layout_it_cannot_edit_safely(tmp_path: Path) -> None:
    (tmp_path / "labels.yaml").write_text("labels: {A: {current: 2026C3.0}}\n")
    with pytest.raises(InputError, match="labels.yaml"):
        write_labels(tmp_path, [Move("A", "current", "2026C3.0", "2026C1.0")])
    assert (tmp_path / "labels.yaml").read_text() == "labels: {A: {current: 2026C3.0}}\n"


# --- promotion (pure) -----------------------------------------------------------------------------------

RELEASES = load_releases(Path(__file__).resolve().parents[2] / "releases")


def test_promotion_needs_a_canary_unless_forced() -> None:
    labels = {"B": {"current": "2026C1.0", "previous": "2025C5.0"}}
    with pytest.raises(InputError, match="no canary"):
        plan_promotion(release="2026C3.0", label="current", group="B", releases=RELEASES, labels=labels,
                       groups=["A", "B"], canary=[])
    forced = plan_promotion(release="2026C3.0", label="current", group="B", releases=RELEASES, labels=labels,
                            groups=["A", "B"], canary=[], force=True)
    assert forced.forced and [m.describe() for m in forced.moves] == [
        "B:previous 2025C5.0 -> 2026C1.0", "B:current 2026C1.0 -> 2026C3.0"]
    ok = plan_promotion(release="2026C3.0", label="recommended", group="B", releases=RELEASES, labels=labels,
                        groups=["A", "B"], canary=["ZOOM"])
    assert [m.describe() for m in ok.moves] == ["B:recommended (unset) -> 2026C3.0"] and not ok.forced


@pytest.mark.parametrize(("kw", "field"), [
    ({"label": "latest"}, "--label"), ({"label": "previous"}, "--label"), ({"group": "Z"}, "--group"),
    ({"release": "2030C1.0"}, "--release")])
def test_promotion_refuses_bad_names(kw: dict, field: str) -> None:
    args = {"release": "2026C3.0", "label": "current", "group": "B", **kw}
    with pytest.raises(InputError, match=field):
        plan_promotion(**args, releases=RELEASES, labels={}, groups=["A", "B"], canary=["ZOOM"], force=True)


# --- retention (pure) -------------------------------------------------------------------------------

def _rel(rid: str, *, revoked: bool = False, os: str = "win-1") -> ReleaseImages:
    return ReleaseImages(rid, revoked, {"apps": f"apps-{rid}", "os-template": os})


TABLE = [_rel("2025C1.0", os="win-0"), _rel("2025C2.0", os="win-0"), _rel("2025C3.0"), _rel("2025C4.0"),
         _rel("2025C5.0"), _rel("2026C1.0", os="win-2"), _rel("2026C2.0", os="win-2")]


def _decide(builds=None, labels=None, running=None, desired=None, rollback=None, releases=TABLE, stored=None):
    names = {n for r in releases for n in r.images.values()} if stored is None else stored
    used = usage(labels=labels or {}, running=running or {}, desired=desired or {}, rollback=rollback or {})
    return {d.artifact: d for d in select(releases=releases, builds=builds or {}, stored=set(names), used=used)}


def test_keeps_the_two_newest_good_releases_per_kind() -> None:
    d = _decide()
    assert {n for n, x in d.items() if x.keep} == {"apps-2026C2.0", "apps-2026C1.0", "win-2", "win-1"}
    assert not d["apps-2025C5.0"].keep and not d["win-0"].keep


def test_failed_and_unfinished_builds_never_count_towards_the_two() -> None:
    d = _decide(builds={("apps", "apps-2026C2.0"): "failed", ("apps", "apps-2026C1.0"): "started"},
                stored={"apps-2025C5.0", "apps-2025C4.0", "apps-2025C3.0", "apps-2026C1.0", "apps-2026C2.0"})
    kept = {n for n, x in d.items() if x.keep}
    assert kept == {"apps-2025C5.0", "apps-2025C4.0"}


def test_never_removes_what_a_label_an_instrument_or_a_rollback_point_uses() -> None:
    d = _decide(labels={"A": {"previous": "2025C1.0"}}, running={"ZOOM": "2025C2.0"}, desired={"LET": "2025C3.0"},
                rollback={"WISH": ["2025C4.0"]})
    for rid, why in (("2025C1.0", "label A:previous"), ("2025C2.0", "ZOOM runs it"), ("2025C3.0", "wanted by LET"),
                     ("2025C4.0", "WISH rollback point")):
        assert d[f"apps-{rid}"].keep and any(why in r for r in d[f"apps-{rid}"].reasons)
    assert d["win-0"].keep  # the OS template of a used release stays too
    assert not d["apps-2025C5.0"].keep


def test_revoked_releases_do_not_count_and_go_once_unused() -> None:
    table = [*TABLE[:-1], _rel("2026C2.0", revoked=True, os="win-2")]
    d = _decide(releases=table)
    assert not d["apps-2026C2.0"].keep and d["apps-2026C2.0"].reasons == ["revoked and unused"]
    assert d["apps-2025C5.0"].keep  # the second newest good one now
    d = _decide(releases=table, running={"ZOOM": "2026C2.0"})
    assert d["apps-2026C2.0"].keep


def test_artifacts_of_no_release_are_kept() -> None:
    d = _decide(stored={"win11-ltsc-2027.1"})
    assert d["win11-ltsc-2027.1"].keep and d["win11-ltsc-2027.1"].reasons == ["not part of any release"]


# --- end to end through the CLI ------------------------------------------------------------------------

def test_promote_refuses_without_canary_then_moves_and_commits_after_one(labelled: Path) -> None:
    project = labelled
    before = (project / "releases" / "labels.yaml").read_text()
    res = inv(project, "promote", "--release=2026C3.0", "--label=current", "--group=B")
    assert res.returncode == 1 and "no canary" in res.stderr and "--force" in res.stderr
    assert (project / "releases" / "labels.yaml").read_text() == before
    ctx = ctx_for(project)
    try:
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok  # ZOOM is in group B: the canary
    finally:
        ctx.close()
    res = inv(project, "promote", "--release=2026C3.0", "--label=current", "--group=B", "--dry-run")
    assert res.returncode == 0 and "would move B:current 2026C1.0 -> 2026C3.0" in res.stdout
    assert (project / "releases" / "labels.yaml").read_text() == before
    res = inv(project, "promote", "--release=2026C3.0", "--label=current", "--group=B")
    assert res.returncode == 0, res.stderr
    assert "canary: ZOOM" in res.stdout and "committed" in res.stdout
    labels = load_labels(project / "releases")
    assert labels["B"]["current"] == "2026C3.0" and labels["B"]["previous"] == "2026C1.0"
    assert labels["A"] == yaml.safe_load(before)["labels"]["A"]
    assert "current: 2026C3.0  # ZOOM's group" in (project / "releases" / "labels.yaml").read_text()
    log = git(project, "log", "-1", "--name-only", "--format=%s")
    assert "promote 2026C3.0 to B:current" in log and log.strip().splitlines()[-1] == "releases/labels.yaml"
    assert git(project, "status", "--porcelain", "--", "releases").strip() == ""


def test_promote_without_git_identity_leaves_the_change_uncommitted(labelled: Path, monkeypatch) -> None:
    project = labelled
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var)
    res = inv(project, "promote", "--release=2026C1.0", "--label=qa", "--group=B", "--force")
    assert res.returncode == 0, res.stderr
    assert "not committed" in res.stdout and "user.name" in res.stdout
    assert " M releases/labels.yaml" in git(project, "status", "--porcelain")


def test_revoke_blocks_deploys_flags_labels_and_commits(labelled: Path) -> None:
    project = labelled
    res = inv(project, "revoke", "--release=2026C3.0", "--reason=motion driver crash", "--dry-run")
    assert res.returncode == 0 and "would revoke" in res.stdout
    assert git(project, "status", "--porcelain", "--", "releases").strip() == ""
    res = inv(project, "revoke", "--release=2026C3.0", "--reason=motion driver crash")
    assert res.returncode == 0, res.stderr
    assert "A:current" in res.stdout and "committed" in res.stdout
    rel = load_releases(project / "releases")["2026C3.0"]
    assert rel.revoked and rel.revoked.reason == "motion driver crash"
    assert "revoke 2026C3.0: motion driver crash" in git(project, "log", "-1", "--format=%s")
    res = inv(project, "reimage", "--instrument=ZOOM", "--release=2026C3.0")
    assert res.returncode == 1 and "revoked" in res.stderr
    res = inv(project, "releases")
    assert "label points to a revoked release" in res.stdout and "A:current -> 2026C3.0" in res.stdout
    res = inv(project, "revoke", "--release=2026C3.0", "--reason=again")
    assert res.returncode == 1 and "already revoked" in res.stderr


def test_prune_dry_run_then_apply_keeps_what_is_used(labelled: Path) -> None:
    project = labelled
    ctx = ctx_for(project)
    try:
        for rid in ("2025C5.0", "2026C1.0"):  # older releases: their images are in the store and on the host
            publishing.publish(ctx, rid, ctx.inventory.instrument("ZOOM").host)
            staging.stage(ctx, rid, ctx.inventory.instrument("ZOOM").host)
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok  # ZOOM runs 2026C3.1, rollback point 2026C3.0
    finally:
        ctx.close()
    res = inv(project, "prune")
    assert res.returncode == 0, res.stderr
    assert "dry run: 0 to prune" in res.stdout and "apps-2025C5.0" in res.stdout
    ctx = ctx_for(project)
    try:
        decisions = {d.artifact: d for d in release_ops.prune_decisions(ctx)}
        assert decisions["apps-2025C5.0"].keep and decisions["apps-2025C5.0"].reasons == [
            "2025C5.0: label B:previous"]
        assert any("ZOOM rollback point" in r for r in decisions["apps-2026C3.0"].reasons)
        assert any("ZOOM runs it" in r for r in decisions["apps-2026C3.1"].reasons)
    finally:
        ctx.close()
    # Move B:previous off 2025C5.0: now nothing uses it, and two newer releases are good.
    labels_path = project / "releases" / "labels.yaml"
    labels_path.write_text(labels_path.read_text().replace("previous: 2025C5.0", "previous: 2026C1.0"))
    res = inv(project, "prune")
    assert res.returncode == 0 and "dry run: 1 to prune" in res.stdout
    ctx = ctx_for(project)
    try:
        staged_before = list((project / ".state" / "lab" / "hosts").rglob("apps-2025C5.0-*"))
        assert staged_before
        report = release_ops.prune(ctx, apply=True)
        assert [d.artifact for d in report.to_remove] == ["apps-2025C5.0"]
        assert report.removed_blobs == ["apps-2025C5.0"] and report.unstaged
        assert not any(p.exists() for p in staged_before)
        assert not ctx.store.exists("apps-2025C5.0")
        assert any(m.name == "apps-2025C5.0" for m in ctx.store.pruned_manifests())
        for kept in ("apps-2026C1.0", "apps-2026C3.0", "apps-2026C3.1", "win11-ltsc-2025.1"):
            ctx.store.verify(kept)
        # the second pass finds nothing more to do
        assert release_ops.prune(ctx, apply=True).to_remove == []
    finally:
        ctx.close()


def test_prune_counts_no_failed_build(labelled: Path) -> None:
    project = labelled
    ctx = ctx_for(project)
    try:
        for rid in ("2025C5.0", "2026C1.0", "2026C3.0", "2026C3.1"):
            staging.artifacts_of(ctx, rid, "HVHOST01")
        records = ctx.builds
        rec = records.start(kind="apps", name="apps-2026C3.1", release="2026C3.1", inputs={})
        records.fail(rec, "robocopy failed")
        decisions = {d.artifact: d for d in release_ops.prune_decisions(ctx)}
    finally:
        ctx.close()
    # 2026C3.1's Apps build failed, so the two newest good Apps images are 2026C3.0 and 2026C1.0
    assert any("newest good apps images (2026C1.0)" in r for r in decisions["apps-2026C1.0"].reasons)
    assert decisions["apps-2026C3.1"].reasons == ["its build is failed and it is unused"]


def test_prune_apply_refuses_to_remove_an_image_a_disk_still_uses(labelled: Path) -> None:
    project = labelled
    ctx = ctx_for(project)
    try:
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
        inst = ctx.inventory.instrument("ZOOM")
        host = ctx.inventory.host_of(inst)
        sha = ctx.store.get("apps-2026C3.0").sha256
        from imaging.model import layout
        from imaging.model.steps import Step

        with pytest.raises(ImagingError, match="child of"):
            ctx.providers.run(Step("remove_image", inst.host,
                                   {"path": layout.image_path(host, "apps-2026C3.0", sha), "sha256": sha}, "t"))
    finally:
        ctx.close()


@pytest.mark.parametrize(("name", "options"), [
    ("build-apps", ("--release", "--source", "--host", "--size-gb", "--workdir", "--dry-run")),
    ("verify-image", ("--release", "--image", "--manifest", "--workdir")),
    ("build-template", ("--version", "--base", "--host", "--iso", "--image-index", "--dry-run")),
    ("promote", ("--release", "--label", "--group", "--force", "--dry-run")),
    ("revoke", ("--release", "--reason", "--dry-run")),
    ("prune", ("--apply",)),
])
def test_release_tasks_have_help_for_every_option(project: Path, name: str, options: tuple[str, ...]) -> None:
    out = inv(project, "--help", name).stdout
    for opt in options:
        line = next((ln for ln in out.splitlines() if re.match(r"\s*-[a-zA-Z][ ,]", ln) and opt in ln), "")
        assert line and len(line.split(opt, 1)[1].strip()) > 10, f"{name} {opt} has no help: {line!r}"


# --- issue 16, item 8: promotion and rollback facts ----------------------------------------------------

def test_an_instrument_that_rolled_the_release_back_is_no_canary(labelled: Path) -> None:
    from imaging.ops import rollback as rollbacks

    ctx = ctx_for(labelled)
    try:
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
        assert rollbacks.rollback_last(ctx, "ZOOM").ok  # ZOOM went back: 2026C3.1 failed it
        with pytest.raises(InputError, match="no canary"):
            release_ops.promote(ctx, release="2026C3.1", label="current", group="B")
    finally:
        ctx.close()


def test_promoting_over_a_revoked_current_keeps_it_out_of_previous() -> None:
    from imaging.model.releases import Revocation

    bad = Revocation(reason="crashes", when="2026-11-01T00:00:00Z", who="ops")
    revoked = {**RELEASES, "2026C1.0": RELEASES["2026C1.0"].model_copy(update={"revoked": bad})}
    labels = {"B": {"current": "2026C1.0", "previous": "2025C5.0"}}
    promo = plan_promotion(release="2026C3.0", label="current", group="B", releases=revoked, labels=labels,
                           groups=["A", "B"], canary=["ZOOM"])
    assert [m.describe() for m in promo.moves] == ["B:current 2026C1.0 -> 2026C3.0"]
    assert any("revoked" in n and "previous stays 2025C5.0" in n for n in promo.notes)


def test_a_rollback_within_one_release_marks_nothing_bad(labelled: Path) -> None:
    from imaging.ops import rollback as rollbacks

    ctx = ctx_for(labelled)
    try:
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
        assert reimaging.reimage(ctx, "ZOOM", "2026C3.0", force=True).ok  # a fresh generation, same release
        assert rollbacks.rollback_last(ctx, "ZOOM").ok
        assert ctx.bad.of("ZOOM") == {}
    finally:
        ctx.close()
