"""The operations a user asks for (reimage, resume, rollback, stage), wired from the pure parts.

Each function gathers what a plan needs (inventory, release, artifacts, what the host shows, settings),
asks the planner for the plan, and hands it to the executor. Printing belongs to tasks.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.config import Paths
from imaging.core.errors import ArtifactError, ImagingError, InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.engine.executor import Executor, Listener, Outcome, StepEvent, is_live
from imaging.images import samples
from imaging.model import layout
from imaging.model.inventory import SLOTS, Instrument, Inventory, load_inventory
from imaging.model.labels import load_labels, resolve
from imaging.model.plan import SETTINGS_MANIFEST, Artifact, Observed, Plan, ReimageInputs, generation, plan_reimage
from imaging.model.releases import ReleaseDefinition, load_releases
from imaging.model.steps import Step
from imaging.providers.dispatcher import Dispatcher
from imaging.providers.lab.provider import FaultHook
from imaging.settings import migrations
from imaging.settings.instruments import DeployedSettings, ReimageSettings, prepare_reimage_settings
from imaging.state.journal import OK, RUNNING, Journal, Operation, who
from imaging.state.store import ArtifactStore

LAB_OS_FILES = 400
LAB_APPS_FILES = 300


@dataclass
class Context:
    """Everything one invocation works with, loaded and validated once before anything acts."""

    paths: Paths
    inventory: Inventory
    releases: dict[str, ReleaseDefinition]
    labels: dict[str, dict[str, str]]
    store: ArtifactStore
    journal: Journal
    providers: Dispatcher
    sample_sizes: tuple[int, int] = (LAB_OS_FILES, LAB_APPS_FILES)

    @classmethod
    def load(cls, paths: Paths | None = None, *, fault: FaultHook | None = None) -> Context:
        paths = paths or Paths.from_env()
        inventory = load_inventory(paths.inventory)
        releases = load_releases(paths.releases)
        labels = load_labels(paths.releases)
        return cls(paths=paths, inventory=inventory, releases=releases, labels=labels,
                   store=ArtifactStore(paths.store), journal=Journal(paths.journal),
                   providers=Dispatcher(inventory, paths.lab, fault=fault))

    def close(self) -> None:
        self.providers.close()

    def executor(self, listener: Listener | None = None) -> Executor:
        return Executor(self.providers, self.journal, self.paths.locks, listener)


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")[:-4] + "Z"


def new_op_id() -> str:
    return uuid.uuid4().hex[:12]


# --- releases and artifacts ------------------------------------------------------------------------


def desired_release(ctx: Context, inst: Instrument, override: str | None = None) -> str:
    name = override or inst.desired(ctx.inventory.groups)
    source = "--release" if override else (inst.source if inst.release else str(ctx.paths.inventory / "groups.yaml"))
    release = resolve(name, group=inst.group, labels=ctx.labels, releases=ctx.releases, source=source)
    rel = ctx.releases[release]
    if not override:
        from imaging.ops.hotfix import bad_releases

        bad = bad_releases(ctx, inst.name).get(release)
        if bad:
            raise InputError(f"release {release} is marked bad for {inst.name} (rolled back {bad['when']} by "
                             f"{bad['who']}, operation {bad['operation']}); it is not chosen by default",
                             field="release", value=release,
                             fix=f"give --release={release} to use it anyway, or point the label elsewhere")
    if rel.revoked:
        raise InputError(f"release {release} is revoked ({rel.revoked.reason})", field="release", value=release,
                         fix="choose another release or label")
    return release


def artifacts_of(ctx: Context, release: str, *, lab: bool, create: bool = True) -> tuple[Artifact, Artifact]:
    """The OS template and Apps image of a release, from the store; on the lab, made on first use.

    With ``create=False`` (dry runs) a missing lab sample is described but not stored.
    """
    rel = ctx.releases[release]
    out = []
    for ref, kind in ((rel.os_template, "os-template"), (rel.apps, "apps")):
        if not ctx.store.exists(ref.name):
            if not lab:
                raise ArtifactError(f"artifact {ref.name} of release {release} is not in the store; build it with "
                                    f"`invoke build-{'template' if kind == 'os-template' else 'apps'}`")
            os_files, apps_files = ctx.sample_sizes
            files = (samples.os_tree_files(ref.name, os_files) if kind == "os-template"
                     else samples.apps_tree_files(ref.name, rel.apps.version, apps_files))
            if not create:
                sha, size = samples.sample_identity(files)
                out.append(Artifact(name=ref.name, sha256=sha, size=size, suffix=".tar"))
                continue
            samples.ensure_sample(ctx.store, name=ref.name, kind=kind, files=files)
        man = ctx.store.get(ref.name)
        if ref.sha256 and ref.sha256 != man.sha256:
            raise ArtifactError(f"release {release} pins {ref.name} to sha256 {ref.sha256}, the store holds "
                                f"{man.sha256}; the artifact was rebuilt or replaced")
        out.append(Artifact(name=man.name, sha256=man.sha256, size=man.size, suffix=man.suffix or ".vhdx"))
    return out[0], out[1]


def stage_steps(ctx: Context, release: str, host_name: str) -> list[Step]:
    """The steps that put a release's images on one host, each verified on arrival."""
    host = ctx.inventory.hosts[host_name]
    steps = []
    for art in artifacts_of(ctx, release, lab=host.provider == "lab"):
        steps.append(Step("stage_artifact", host_name, {
            "name": art.name, "sha256": art.sha256,
            "share_path": layout.share_path(host, art.name, art.sha256, art.suffix),
            "dest_path": layout.image_path(host, art.name, art.sha256)},
            f"stage {art.name} on {host_name} (pull from the share, verify sha256, make read-only)"))
    return steps


@dataclass(frozen=True)
class StageEvent:
    """Progress of staging on one host: ``phase`` is "publish" (bytes onto the share, with done/total) or
    "stage" (the host pulls and verifies; ``result`` is set when the step ended)."""

    host: str
    artifact: str
    phase: str
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None


StageProgress = Callable[[StageEvent], None]


def publish(ctx: Context, release: str, host_name: str, *, progress: StageProgress | None = None) -> None:
    """Put a release's artifacts on the host's share. The lab share is a folder; a real one is mounted."""
    host = ctx.inventory.hosts[host_name]
    if host.provider != "lab":
        return  # real shares are filled by `invoke publish` on the machine that mounts them
    lab = ctx.providers.lab
    for art in artifacts_of(ctx, release, lab=True):
        dest = lab.path(host_name, layout.share_path(host, art.name, art.sha256, art.suffix)).parent
        cb = None
        if progress is not None:
            def cb(done: int, total: int, _name: str = art.name) -> None:
                progress(StageEvent(host_name, _name, "publish", done, total))
        ctx.store.stage(art.name, dest, progress=cb)


def stage(ctx: Context, release: str, host_name: str, *,
          progress: StageProgress | None = None) -> list[dict[str, Any]]:
    """Stage a release's images on one host: once, verified, resumable (a half-done copy is finished or
    redone; a staged image is left alone). Returns one result per artifact with ``name``, ``changed``
    and ``bytes`` copied."""
    publish(ctx, release, host_name, progress=progress)
    out = []
    for s in stage_steps(ctx, release, host_name):
        name = str(s.inputs["name"])
        if progress is not None:
            progress(StageEvent(host_name, name, "stage"))
        res = {"name": name, **ctx.providers.run(s)}
        if progress is not None:
            progress(StageEvent(host_name, name, "stage", result=res))
        out.append(res)
    return out


# --- state ---------------------------------------------------------------------------------------


def observe(ctx: Context, inst: Instrument) -> Observed:
    state = ctx.providers.run(Step("get_state", inst.host, {"vm": inst.vm}, f"look at {inst.vm}"))
    return Observed.from_state(state)


def running_release(ctx: Context, inst: Instrument) -> str | None:
    """What the instrument runs, by the journal's last finished operation that put a release on it."""
    op = ctx.journal.last(inst.name, kinds=("reimage", "rollback"), statuses=(OK,))
    return op.to_release if op else None


def interrupted(ctx: Context, inst: Instrument) -> Operation | None:
    """An operation that is marked running but whose process is gone."""
    op = ctx.journal.last(inst.name)
    if op and op.status == RUNNING and not is_live(ctx.paths.locks, inst.name):
        return op
    return None


def refuse_if_interrupted(ctx: Context, inst: Instrument) -> None:
    op = interrupted(ctx, inst)
    if op:
        raise ImagingError(
            f"{inst.name} has an interrupted {op.kind} ({op.id}, started {op.started} by {op.user}); finish it "
            f"with `invoke resume --instrument={inst.name}` or undo it with `invoke rollback --instrument={inst.name}`")


# --- settings ------------------------------------------------------------------------------------

SETTINGS_READ_LIMIT = 64 * 1024 * 1024


def deployed_settings(ctx: Context, inst: Instrument, observed: Observed) -> DeployedSettings | None:
    """What is on the instrument's Settings volume now (None before its first deployment)."""
    path = observed.disks.get(SLOTS["settings"])
    if not path:
        return None
    res = ctx.providers.run(Step("read_volume", inst.host, {"path": path, "max_bytes": SETTINGS_READ_LIMIT},
                                 f"read the Settings volume of {inst.name}"))
    files = {rel: base64.b64decode(b64) for rel, b64 in res["files"].items()}
    raw = files.pop(SETTINGS_MANIFEST, None)
    manifest = json.loads(raw) if raw else {"files": {}}
    return DeployedSettings(manifest=manifest, files=files)


def settings_for(ctx: Context, inst: Instrument, release: str, observed: Observed, *, dry_run: bool,
                 capture_drift: bool = False, allow_dirty: bool = False, ref: str = "HEAD",
                 stamp_: str | None = None) -> ReimageSettings:
    """Drift check (refuses before any change), drift capture, migrations, render: see settings_fleet."""
    return prepare_reimage_settings(
        repo=ctx.paths.root, inventory=ctx.inventory, inst=inst, release=release,
        settings_version=ctx.releases[release].settings_version, deployed=deployed_settings(ctx, inst, observed),
        capture=capture_drift, dry_run=dry_run, allow_dirty=allow_dirty, ref=ref, stamp=stamp_)


# --- reimage -------------------------------------------------------------------------------------


def plan_for_reimage(ctx: Context, name: str, release: str | None = None, *, op_id: str | None = None,
                     allow_dirty: bool = False, dry_run: bool = True, capture_drift: bool = False,
                     settings_ref: str = "HEAD", hotfixes: tuple[str, ...] = ()) -> Plan:
    """Gather the inputs (reading only) and compute the plan. Touches nothing when ``dry_run``.

    Without ``dry_run`` the settings half may already act before the plan runs, and only in ways that
    lose nothing: captured drift is committed to the instrument's settings branch, and pending migrations
    are committed to it one step at a time (the branch's previous commit is kept for rollback).
    ``hotfixes`` are the ones the instrument will carry after the reimage (recorded on Var).
    """
    inst = ctx.inventory.instrument(name)
    host = ctx.inventory.host_of(inst)
    target = desired_release(ctx, inst, release)
    os_img, apps_img = artifacts_of(ctx, target, lab=host.provider == "lab", create=not dry_run)
    observed = observe(ctx, inst)
    op_id = op_id or new_op_id()
    when = stamp()
    rs = settings_for(ctx, inst, target, observed, dry_run=dry_run, capture_drift=capture_drift,
                      allow_dirty=allow_dirty, ref=settings_ref, stamp_=when)
    files = {rel: data.decode("utf-8") for rel, data in sorted(rs.rendered.files.items())}
    digest = manifest_digest({rel: sha256_bytes(data) for rel, data in rs.rendered.files.items()})
    drift_files = ({rel: base64.b64encode(data).decode("ascii") for rel, data in rs.captured.var_files.items()}
                   if rs.captured else {})
    post_boot = []
    for pb in rs.post_boot:
        _, body = migrations.completion_record(pb, op_id=op_id, result={"exit_code": 0})
        post_boot.append({"migration": pb.migration, "description": pb.description, "command": pb.command,
                          "marker": pb.marker, "record": json.loads(body)})
    return plan_reimage(ReimageInputs(
        inst=inst, host=host, release=target, apps_version=ctx.releases[target].apps.version,
        os_template=os_img, apps_image=apps_img, settings_files=files, settings_digest=digest,
        settings_commit=rs.rendered.provenance.get("commit"), observed=observed, op_id=op_id, owner=who(),
        stamp=when, from_release=running_release(ctx, inst), hotfixes=hotfixes,
        migrations=tuple(rs.migration.steps) if rs.migration else (), settings_version=rs.target_version,
        settings_before_commit=rs.migration.before_commit if rs.migration else None, drift_files=drift_files,
        post_boot=tuple(post_boot)))


def reimage(ctx: Context, name: str, release: str | None = None, *, listener: Listener | None = None,
            batch: str | None = None, allow_dirty: bool = False, capture_drift: bool = False,
            settings_ref: str = "HEAD", drop_hotfixes: tuple[str, ...] = ()) -> Outcome:
    """Reimage one instrument. Hotfixes it carries that the target release lacks stop it before anything
    changes (settings capture included), unless declared for the target (re-applied after the reimage) or
    dropped by the caller."""
    from imaging.ops.hotfix import hotfixes_to_reapply, refuse_dropped_hotfixes

    inst = ctx.inventory.instrument(name)
    refuse_if_interrupted(ctx, inst)
    target = desired_release(ctx, inst, release)
    refuse_dropped_hotfixes(ctx, inst, target, drop_hotfixes)
    carry = hotfixes_to_reapply(ctx, inst, target, drop_hotfixes)
    included = tuple(ctx.releases[target].includes_hotfixes)
    op_id = new_op_id()
    plan = plan_for_reimage(ctx, name, target, op_id=op_id, allow_dirty=allow_dirty, dry_run=False,
                            capture_drift=capture_drift, settings_ref=settings_ref,
                            hotfixes=included + tuple(carry))
    host = ctx.inventory.host_of(inst)
    if host.provider == "lab":
        publish(ctx, plan.to_release or "", inst.host)
    for s in stage_steps(ctx, plan.to_release or "", inst.host):
        res = ctx.providers.run(s)  # idempotent: copies nothing when the images are already staged
        if listener and res.get("changed"):
            listener(StepEvent(inst.name, "stage", 0, 0, s, ok=True, result=res))
    outcome = ctx.executor(listener).execute(plan, op_id=op_id, batch=batch)
    if outcome.ok:
        _after_reimage(ctx, inst, outcome, carry, listener)
    return outcome


def _after_reimage(ctx: Context, inst: Instrument, outcome: Outcome, carry: list[str],
                   listener: Listener | None) -> None:
    """Once a reimage finished: retire old generations, put carried hotfixes back on the new Apps disk."""
    from imaging.ops.hotfix import reapply_after_reimage

    retire_old_generations(ctx, inst)
    for hid, out in reapply_after_reimage(ctx, inst, carry, listener=listener, reimage_op=outcome.op_id).items():
        if not out.ok:
            outcome.error = f"reimaged, but re-applying hotfix {hid} failed: {out.error}"


def _carried_by_plan(ctx: Context, op: Operation) -> list[str]:
    """The hotfixes a reimage plan promised to carry (recorded in its write_record step, minus those the
    release already includes), so that a resumed reimage re-applies them too."""
    for d in op.plan:
        if d["action"] == "write_record":
            included = set(ctx.releases[op.to_release].includes_hotfixes) if op.to_release in ctx.releases else set()
            return sorted(h for h in d["inputs"]["record"].get("hotfixes", []) if h not in included)
    return []


def resume(ctx: Context, name: str, *, listener: Listener | None = None) -> Outcome:
    inst = ctx.inventory.instrument(name)
    op = interrupted(ctx, inst)
    if op is None:
        raise ImagingError(f"{inst.name} has no interrupted operation to resume")
    outcome = ctx.executor(listener).resume(op.id)
    if outcome.ok and op.kind == "reimage":
        _after_reimage(ctx, inst, outcome, _carried_by_plan(ctx, op), listener)
    return outcome


def retire_old_generations(ctx: Context, inst: Instrument) -> list[str]:
    """Keep the current and the previous generation of OS/Apps/Settings disks; delete older ones.

    Only generations made by reimages that finished are counted (failed, rolled-back and unfinished ones
    never are), and nothing attached, used by the rollback point of the last finished reimage or rollback,
    or touched by an unfinished operation is deleted (the provider refuses attached disks anyway).
    """
    gens: list[dict[str, str]] = []
    for op in ctx.journal.operations(instrument=inst.name):
        if op.status == OK and op.rollback_point and op.rollback_point.get("new") and op.kind == "reimage":
            gens.append(op.rollback_point["new"])
    current_disks = set(observe(ctx, inst).disks.values())
    keep = {p for g in gens[-2:] for p in g.values()} | current_disks
    # What the last finished reimage or rollback would return to is the previous generation: keep it.
    for kind in ("reimage", "rollback"):
        last = ctx.journal.last(inst.name, kinds=(kind,), statuses=(OK,))
        if last and last.rollback_point:
            keep |= set(last.rollback_point.get("disks", {}).values())
    # An unfinished operation may still need what it started from.
    for op in ctx.journal.operations(instrument=inst.name):
        if op.status == RUNNING and op.rollback_point:
            keep |= set(op.rollback_point.get("disks", {}).values()) | set(op.rollback_point.get("new", {}).values())
    deleted = []
    for g in gens[:-2]:
        for role, path in g.items():
            if path not in keep:
                res = ctx.providers.run(Step("delete_disk", inst.host, {"path": path, "role": role},
                                             f"delete the retired {role} disk {path}"))
                if res.get("changed"):
                    deleted.append(path)
    return deleted


def load_context(root: Path | None = None) -> Context:
    return Context.load(Paths.from_env(root))


__all__ = ["Context", "reimage", "resume", "plan_for_reimage", "stage", "observe", "generation"]
