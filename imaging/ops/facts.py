"""Read-only questions about the world and the journal, answered in one place: which release an instrument
should run, what it runs and carries, whether it is busy, what its host shows. Every operation asks these;
planners take the answers as data. Nothing here changes anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imaging.core import git as gitrepo
from imaging.core.errors import ImagingError, InputError
from imaging.engine.executor import is_live
from imaging.model import layout
from imaging.model.inventory import SLOTS, Instrument
from imaging.model.labels import resolve
from imaging.model.plan import Observed
from imaging.model.record import problem as record_problem
from imaging.model.releases import ReleaseDefinition
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.settings.migrations import plan_migrations
from imaging.settings.render import VERSION_FILE, parse_version
from imaging.state.journal import CARRY_BATCH, OK, ROLLBACK_FAILED, RUNNING, Operation

CARRY = CARRY_BATCH  # batch prefix of hotfixes re-applied after a reimage: they belong to that reimage
FAILED = "failed"


# --- which instruments -----------------------------------------------------------------------------------


def select(ctx: Context, *, group: str | None = None, instruments: str = "", everything: bool = False,
           kind: str = "deploy") -> list[Instrument]:
    """The instruments a fleet run works on: ``--group``, ``--instruments=A,B`` or ``@failed`` (the failures
    of the last run of the same ``kind``: deploy, hotfix or revert), or ``--all``."""
    names = [n.strip() for n in instruments.split(",") if n.strip()]
    if not (group or names or everything):
        raise InputError("choose what to deploy", field="--group/--instruments/--all",
                         fix="pass --group=A, --instruments=ZOOM,LARMOR, --instruments=@failed or --all")
    if "@failed" in names:
        last = ctx.runs.last(kind)
        if last is None:
            raise InputError(f"no earlier {kind} to take failures from", field="--instruments", value="@failed",
                             fix="name the instruments instead")
        failed = [n for n, r in last.get("results", {}).items() if r.get("status") == FAILED]
        names = [n for n in names if n != "@failed"] + failed
        if not names:
            raise InputError(f"the last {kind} ({last['id']}) had no failures", field="--instruments",
                             value="@failed", fix="nothing to redo; name instruments to deploy them")
    return ctx.inventory.select(names=names or None, group=group)


# --- releases --------------------------------------------------------------------------------------------


def desired_release(ctx: Context, inst: Instrument, override: str | None = None) -> str:
    """The release ``inst`` should run: ``override`` (a release id or label) or the instrument's own choice
    (its pinned release, else its group's label). A revoked release is refused; a release marked bad for
    the instrument (it was rolled back there) is refused unless named by ``override``."""
    name = override or inst.desired(ctx.inventory.groups)
    source = "--release" if override else (inst.source if inst.release else str(ctx.paths.inventory / "groups.yaml"))
    release = resolve(name, group=inst.group, labels=ctx.labels, releases=ctx.releases, source=source)
    rel = ctx.releases[release]
    if not override:
        bad = ctx.bad.of(inst.name).get(release)
        if bad:
            raise InputError(f"release {release} is marked bad for {inst.name} (rolled back {bad['when']} by "
                             f"{bad['who']}, operation {bad['operation']}); it is not chosen by default",
                             field="release", value=release,
                             fix=f"give --release={release} to use it anyway, or point the label elsewhere")
    if rel.revoked:
        raise InputError(f"release {release} is revoked ({rel.revoked.reason})", field="release", value=release,
                         fix="choose another release or label")
    return release


def desired_releases(ctx: Context, insts: Iterable[Instrument], override: str | None = None) -> dict[str, str]:
    """``desired_release`` of each instrument, by name: computed once per instrument for a fleet run."""
    return {i.name: desired_release(ctx, i, override) for i in insts}


def running_release(ctx: Context, inst: Instrument) -> str | None:
    """What the instrument runs, by the journal's last finished operation that put a release on it."""
    op = setter_op(ctx, inst)
    return op.to_release if op else None


def who_runs(ctx: Context) -> dict[str, list[str]]:
    """release -> the instruments running it."""
    runs: dict[str, list[str]] = {}
    for inst in ctx.inventory.instruments.values():
        r = running_release(ctx, inst)
        if r:
            runs.setdefault(r, []).append(inst.name)
    return {r: sorted(names) for r, names in runs.items()}


def settings_version_of(ctx: Context, inst: Instrument) -> int | None:
    """The format the instrument's settings are in now: its branch's version file where there is a settings
    repository (what the migrations start from), else the settings version of the release it runs; None
    when neither is known (a new instrument: nothing to migrate)."""
    repo = ctx.inventory.settings_repo
    if repo is not None and gitrepo.branch_exists(repo, inst.vm):
        raw = gitrepo.read_tree(repo, f"refs/heads/{inst.vm}").get(VERSION_FILE)
        if raw is not None:
            return parse_version(raw, source=f"{repo}@{inst.vm}")
    current = running_release(ctx, inst)
    return ctx.releases[current].settings_version if current in ctx.releases else None


def migrations_needed(ctx: Context, inst: Instrument, target: ReleaseDefinition) -> list[str]:
    """The settings migrations a move of the instrument to ``target`` runs, by id, from the format its
    settings are in now (``settings_version_of``) to the target's; a move with no known path is named as
    such rather than hidden."""
    start, end = settings_version_of(ctx, inst), target.settings_version
    if start is None or start >= end:
        return []
    try:
        return [m.id for m in plan_migrations(start, end)]
    except ImagingError as exc:
        return [f"NO PATH v{start}->v{end}: {exc}"]


# --- what the host shows, and whether the instrument is busy ---------------------------------------------


def observe(ctx: Context, inst: Instrument) -> Observed:
    state = ctx.providers.run(Step("get_state", inst.host, {"vm": inst.vm}, f"look at {inst.vm}"))
    return Observed.from_state(state)


OWN_READ_LIMIT = 64 * 1024 * 1024  # the Settings volume, the record and the ledger are small by design
RECORD_REL, LEDGER_REL = "imaging/record.json", "imaging/hotfixes.json"  # on Var


SETTINGS_INLINE_LIMIT = 4 * 1024 * 1024  # a larger settings file is compared by its sha256, never sent back


def read_instrument_tree(ctx: Context, inst: Instrument, observed: Observed, role: str,
                         rels: list[str] | None = None, *, hash_over: int | None = None
                         ) -> tuple[dict[str, bytes], dict[str, str]] | None:
    """Files of one of the instrument's volumes (all, or those under ``rels``), read without changing
    anything where they can be read: inside the running guest through its link (Hyper-V will not mount a
    disk a running VM holds), else from the disk mounted read-only on the host. None: no such disk.
    Returns (content, hashed): files larger than ``hash_over`` come back as their sha256 only."""
    path = observed.disks.get(SLOTS[role])
    if not path:
        return None
    big = {"hash_over": hash_over} if hash_over else {}
    if observed.power == "Running":
        link = inst.disks.by_role()[role].link
        wanted = rels or [""]
        targets = [link + ("\\" + r.replace("/", "\\") if r else "") for r in wanted]
        res = ctx.providers.run(Step("read_guest_files", inst.host, {"vm": inst.vm, "paths": targets,
                                                                     "max_bytes": OWN_READ_LIMIT, **big},
                                     f"read {', '.join(targets)} inside {inst.vm} (read only)"))
        pairs = list(zip(wanted, targets, strict=True))
        return ({"/".join(x for x in (r, sub) if x): base64.b64decode(b64)
                 for r, t in pairs for sub, b64 in (res["found"].get(t) or {}).items()},
                {"/".join(x for x in (r, sub) if x): sha
                 for r, t in pairs for sub, sha in ((res.get("hashed") or {}).get(t) or {}).items()})
    res = ctx.providers.run(Step("read_volume", inst.host, {"path": path, "max_bytes": OWN_READ_LIMIT, **big,
                                                            **({"only": list(rels)} if rels else {})},
                                 f"read the {role} volume of {inst.name} (read only)"))
    return ({rel: base64.b64decode(b64) for rel, b64 in res["files"].items()}, dict(res.get("hashed") or {}))


def read_instrument_files(ctx: Context, inst: Instrument, observed: Observed, role: str,
                          rels: list[str] | None = None) -> dict[str, bytes] | None:
    """The small files of one of the instrument's volumes (see ``read_instrument_tree``)."""
    tree = read_instrument_tree(ctx, inst, observed, role, rels)
    return tree[0] if tree is not None else None


def own_files(ctx: Context, inst: Instrument, observed: Observed | None = None
              ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The instrument's own record and hotfix ledger on its Var volume, in one read (in the guest while it
    runs): what it runs, by which operation, and which hotfixes each Apps generation carries. The record
    reads as ``{"damaged": why}`` when it cannot be trusted, ``{"unreadable": why}`` when it cannot be read
    now (its guest does not answer), None when there is none yet; the ledger as None when absent."""
    try:
        files = read_instrument_files(ctx, inst, observed or observe(ctx, inst), "var", [RECORD_REL, LEDGER_REL])
    except ImagingError as exc:
        return {"unreadable": str(exc)}, None
    files = files or {}
    record: dict[str, Any] | None = None
    if RECORD_REL in files:
        where = f"{inst.disks.var.link}\\imaging\\record.json"
        try:
            doc = json.loads(files[RECORD_REL])
            why = record_problem(doc)
            record = {"damaged": f"{where}: {why}"} if why else doc
        except (ValueError, UnicodeDecodeError):
            record = {"damaged": f"{where}: it is not JSON"}
    try:
        ledger = json.loads(files[LEDGER_REL]) if LEDGER_REL in files else None
    except (ValueError, UnicodeDecodeError):
        ledger = None
    return record, ledger


def instrument_record(ctx: Context, inst: Instrument, observed: Observed | None = None) -> dict[str, Any] | None:
    """The instrument's own record (see ``own_files``)."""
    return own_files(ctx, inst, observed)[0]


def own_hotfixes(record: dict[str, Any] | None, ledger: dict[str, Any] | None) -> list[str]:
    """The hotfixes the instrument's own ledger says are on its running Apps generation."""
    gen = (record or {}).get("generation")
    return sorted(((ledger or {}).get("generations") or {}).get(gen, {})) if gen else []


def host_notes(ctx: Context, inst: Instrument) -> dict[str, dict[str, Any] | None]:
    """What the host itself says of the instrument, whatever this machine's journal holds: the lock (which
    operation of whom holds it) and the note of a prepared generation. None each when absent or unreadable."""
    host = ctx.inventory.host_of(inst)
    paths = {"lock": layout.lock_path(host, inst), "prepared": layout.prepared_note_path(host, inst)}
    try:
        found = ctx.providers.run(Step("read_host_files", inst.host, {"paths": list(paths.values()),
                                                                      "max_bytes": 1024 * 1024},
                                       f"read {inst.name}'s lock and notes on {inst.host}"))["found"]
    except ImagingError:
        return dict.fromkeys(paths)
    out: dict[str, dict[str, Any] | None] = {}
    for key, path in paths.items():
        try:
            out[key] = json.loads(base64.b64decode(found[path])) if path in found else None
        except ValueError:
            out[key] = None
    return out


def interrupted(ctx: Context, inst: Instrument) -> Operation | None:
    """An operation that is marked running but whose process is gone."""
    op = ctx.journal.last(inst.name)
    if op and op.status == RUNNING and not is_live(ctx.paths.locks, inst.name):
        return op
    return None


def unfinished(ctx: Context, inst: Instrument) -> Operation | None:
    """The operation that left the instrument in no known state: interrupted (its process is gone), or failed
    with an undo that did not complete (the instrument stays locked until `invoke rollback` finishes it)."""
    op = interrupted(ctx, inst)
    if op is not None:
        return op
    last = ctx.journal.last(inst.name)
    return last if last is not None and last.status == ROLLBACK_FAILED else None


def way_out(inst: Instrument, op: Operation) -> str:
    """The one command that gets the instrument out of ``op``'s unfinished state."""
    if op.status == ROLLBACK_FAILED:
        return f"`invoke rollback --instrument={inst.name}` (after fixing the cause; it finishes the undo)"
    return f"`invoke resume --instrument={inst.name}` or `invoke rollback --instrument={inst.name}`"


def refuse_if_interrupted(ctx: Context, inst: Instrument) -> None:
    damaged = ctx.journal.damaged(inst.name)
    if damaged:
        raise ImagingError(
            f"the journal's row of {inst.name}'s {damaged[-1].kind} {damaged[-1].id} is damaged "
            f"({damaged[-1].damaged}); its history cannot be trusted, so nothing was changed: run "
            "`invoke repair-journal` (it rebuilds the row from the instrument's own record)")
    op = unfinished(ctx, inst)
    if op is None:
        return
    if op.status == ROLLBACK_FAILED:
        raise ImagingError(
            f"{inst.name} was not fully restored after its {op.kind} {op.id} failed ({op.error}); it stays locked "
            f"until the undo is finished: {way_out(inst, op)}")
    raise ImagingError(
        f"{inst.name} has an interrupted {op.kind} ({op.id}, started {op.started} by {op.user}); finish it "
        f"with `invoke resume --instrument={inst.name}` or undo it with `invoke rollback --instrument={inst.name}`")


# --- what an instrument carries, from the journal ---------------------------------------------------------


@dataclass
class Carried:
    """The hotfixes of the running Apps generation, derived generation by generation from the journal (a
    reimage starts a generation with none, a hotfix adds one, a revert removes it, a rollback returns to the
    previous generation and what it carried)."""

    generation: str | None
    hotfixes: dict[str, dict[str, Any]]  # id -> manifest (as a dict) in the current generation
    by_generation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def carried(ctx: Context, inst: Instrument) -> Carried:
    gens: dict[str, dict[str, dict[str, Any]]] = {}
    current: str | None = None
    for op in ctx.journal.operations(instrument=inst.name):
        rp = op.rollback_point or {}
        if op.status != OK:
            continue
        if op.kind == "reimage" and rp.get("generation"):
            current = rp["generation"]
            gens[current] = {}
        elif op.kind == "rollback":
            current = rp.get("generation")
        elif op.kind == "hotfix" and rp.get("generation"):
            gens.setdefault(rp["generation"], {})[rp["hotfix"]] = rp["manifest"]
        elif op.kind == "hotfix-revert" and rp.get("generation"):
            gens.setdefault(rp["generation"], {}).pop(rp["hotfix"], None)
    return Carried(generation=current, hotfixes=dict(gens.get(current or "", {})), by_generation=gens)


def known_hotfix(ctx: Context, hotfix_id: str) -> dict[str, Any] | None:
    """The manifest (as a dict) of a hotfix any instrument was ever given (from the journal)."""
    for op in reversed(ctx.journal.operations(kind="hotfix")):
        rp = op.rollback_point or {}
        if rp.get("hotfix") == hotfix_id and rp.get("manifest"):
            return rp["manifest"]
    return None


def setter_op(ctx: Context, inst: Instrument) -> Operation | None:
    """The finished operation that put the running OS/Apps/Settings disks in place (reimage or rollback);
    None when there is none, or when an unadoption since gave the instrument back to its hand-made VM."""
    op = ctx.journal.last(inst.name, kinds=("reimage", "rollback", "unadopt"), statuses=(OK,))
    return op if op and op.kind != "unadopt" else None


@dataclass(frozen=True)
class Prepared:
    """A next generation made beside the running instrument by ``invoke prepare``, not yet switched to."""

    op: Operation
    release: str
    generation: str
    new: dict[str, str]  # role -> disk path
    based_on: str | None  # the operation that had put the running disks in place when it was prepared


def prepared(ctx: Context, inst: Instrument) -> Prepared | None:
    """The instrument's prepared generation: its last finished prepare, unless a later reimage switched to it.
    A later prepare supersedes an earlier one (whose disks it removed)."""
    current: Operation | None = None
    for op in ctx.journal.operations(instrument=inst.name):
        if op.status != OK:
            continue
        if op.kind == "prepare":
            current = op
        elif op.kind == "reimage" and current and (op.rollback_point or {}).get("prepared") == current.id:
            current = None
    if current is None or not current.rollback_point:
        return None
    rp = current.rollback_point
    return Prepared(op=current, release=rp["release"], generation=rp["generation"], new=dict(rp["new"]),
                    based_on=rp.get("based_on"))


def plan_step(op: Operation, action: str) -> dict[str, Any] | None:
    """The inputs of the last step of ``action`` in an operation's recorded plan."""
    found = [s for s in op.plan if s["action"] == action]
    return found[-1]["inputs"] if found else None


def last_operation(ctx: Context, inst: Instrument) -> Operation | None:
    """The last finished operation that changed the instrument (reimage, hotfix, revert or rollback).

    Hotfixes re-applied right after a reimage are part of that reimage: rolling back returns past both."""
    ops = [o for o in ctx.journal.operations(instrument=inst.name)
           if o.status == OK and o.kind in ("reimage", "hotfix", "hotfix-revert", "rollback", *SETTINGS_KINDS)
           and not (o.batch or "").startswith(CARRY)]
    return ops[-1] if ops else None


SETTINGS_KINDS = ("apply-settings", "settings-restore")  # settings changed on the running generation


def health_now(ctx: Context, inst: Instrument) -> dict[str, Any] | None:
    """What a health check of the running generation expects: the checks of the operation that put its disks
    in place, with the Settings digest of the last settings change made to it since (apply-settings or its
    restore). The Apps manifest check belongs to the reimage (hotfixes change Apps afterwards). None: no
    generation recorded here."""
    setter = setter_op(ctx, inst)
    health = plan_step(setter, "health_check") if setter else None
    if setter is None or health is None:
        return None
    health = {k: v for k, v in health.items() if k != "expect_apps"}
    ops = ctx.journal.operations(instrument=inst.name)
    later = [o for o in ops[[o.id for o in ops].index(setter.id) + 1:] if o.status == OK and o.kind in SETTINGS_KINDS]
    if later:
        health["expect_settings_sha256"] = (later[-1].rollback_point or {})["digest_after"]
    return health


def hotfixes_on(ctx: Context, inst: Instrument) -> dict[str, dict[str, Any] | None]:
    """The hotfixes on the instrument's running Apps generation, id -> manifest: this machine's journal's,
    and those the instrument's own ledger lists (another operator's; their manifest from any journal entry
    of that id here, else None: unknown here)."""
    have: dict[str, dict[str, Any] | None] = dict(carried(ctx, inst).hotfixes)
    record, ledger = own_files(ctx, inst)
    for hid in own_hotfixes(record, ledger):
        have.setdefault(hid, known_hotfix(ctx, hid))
    return have


def hotfixes_blocking(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()) -> list[str]:
    """The hotfixes the instrument carries that ``target_release`` neither includes nor is declared for (one
    whose manifest is not known here counts as not declared: it is never dropped silently)."""
    rel = ctx.releases[target_release]
    dropped = set(drop)
    return sorted(hid for hid, man in hotfixes_on(ctx, inst).items()
                  if hid not in rel.includes_hotfixes and hid not in dropped
                  and (man is None or target_release not in man["applies_to"]))


def hotfixes_to_reapply(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()
                        ) -> list[str]:
    """The hotfixes a reimage to ``target_release`` carries over: declared for it, not included in it."""
    rel = ctx.releases[target_release]
    dropped = set(drop)
    return sorted(hid for hid, man in carried(ctx, inst).hotfixes.items()
                  if hid not in rel.includes_hotfixes and hid not in dropped and target_release in man["applies_to"])


def refuse_dropped_hotfixes(ctx: Context, inst: Instrument, target_release: str, drop: Iterable[str] = ()
                            ) -> None:
    """Refuse a reimage that would lose a hotfix the operator did not drop, or that drops one not carried."""
    drop = list(drop)
    have = hotfixes_on(ctx, inst)
    unknown = [d for d in drop if d not in have]
    if unknown:
        raise InputError(f"{inst.name} does not carry hotfix {', '.join(unknown)}", field="drop-hotfix",
                         value=",".join(unknown), fix=f"it carries {', '.join(sorted(have)) or 'none'}")
    blocking = hotfixes_blocking(ctx, inst, target_release, drop)
    if blocking:
        ids = ", ".join(blocking)
        raise InputError(
            f"{inst.name} carries hotfix {ids}, which release {target_release} does not include and which is "
            f"not declared for {target_release}; nothing was changed", field="release", value=target_release,
            fix=f"add {target_release} to the hotfix's applies_to, choose a release that includes it, or give "
                + " ".join(f"--drop-hotfix={h}" for h in blocking))
