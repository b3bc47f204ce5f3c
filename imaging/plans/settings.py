"""Plans for a settings-only change of a running instrument (`invoke apply-settings`) and its rollback. Pure.

Hyper-V cannot swap the Settings disk of a running VM (its programs hold the volume open), so the least
disruptive change is made inside the guest: the new files are staged in the guest and verified by sha256,
the services that read the changed files are stopped, the files they replace are kept on Var, the new ones
are put in place with the volume's manifest, and the services start again. The VM never stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.model import layout
from imaging.model.inventory import Host, Instrument
from imaging.model.plan import Plan
from imaging.model.steps import Step


@dataclass(frozen=True)
class SettingsChange:
    """One instrument's settings change, worked out before anything changes."""

    inst: Instrument
    host: Host
    release: str  # the release it runs (and keeps running)
    files: dict[str, str]  # relpath -> base64: the files that are new or changed
    remove: tuple[str, ...]  # relpaths the new settings no longer have
    manifest: dict[str, Any]  # the volume's new .imaging/manifest.json ({"files", "digest"})
    digest_before: str
    services: tuple[str, ...]  # the services that read the changed files: stopped, then started again
    health: dict[str, Any]  # health_check inputs of the running generation (Settings digest: the one after)
    commit: str | None  # the settings templates commit the new files were rendered from
    op_id: str
    owner: str
    stamp: str

    @property
    def digest_after(self) -> str:
        return str(self.manifest["digest"])

    @property
    def changed(self) -> list[str]:
        return sorted([*self.files, *self.remove])


@dataclass(frozen=True)
class SettingsRestore:
    """The rollback of one finished apply-settings, from what its journal entry recorded."""

    inst: Instrument
    host: Host
    release: str
    applied_op: str  # the apply-settings operation whose backup on Var comes back
    changed: tuple[str, ...]
    services: tuple[str, ...]
    health: dict[str, Any]
    digest_before: str  # the Settings digest the guest had before that operation, and has again after this
    op_id: str
    owner: str


def _links(inst: Instrument, applied_op: str) -> dict[str, Any]:
    disks = inst.disks.by_role()
    return {"vm": inst.vm, "settings_link": disks["settings"].link, "var_link": disks["var"].link,
            "backup_rel": layout.settings_backup_rel(applied_op), "ledger_rel": layout.SETTINGS_LEDGER,
            "operation": applied_op}


def _around(inst: Instrument, host: Host, op_id: str, owner: str, services: tuple[str, ...], change: Step,
            health: dict[str, Any], expect_digest: str, what: str) -> list[Step]:
    """Lock, stop the services, the change, start them, check the guest against ``expect_digest``, unlock."""
    h, name, vm = host.name, inst.name, inst.vm
    lock = {"vm": vm, "lock_path": layout.lock_path(host, inst), "op_id": op_id}
    steps = [Step("acquire_lock", h, {**lock, "owner": owner}, f"lock {name} to {what}",
                  undo=Step("release_lock", h, dict(lock), f"unlock {name}"))]
    names = ", ".join(services)
    running = {"vm": vm, "services": list(services)}
    if services:
        steps.append(Step("stop_services", h, running, f"stop {names} in the guest (they read the files that change)",
                          undo=Step("start_services", h, dict(running), f"start {names} again")))
    steps.append(change)
    if services:
        steps.append(Step("start_services", h, running, f"start {names} in the guest",
                          undo=Step("stop_services", h, dict(running), f"stop {names} again")))
    steps.append(Step("health_check", h, {**health, "expect_settings_sha256": expect_digest},
                      f"check the guest is healthy and its Settings digest is {expect_digest[:12]}"))
    steps.append(Step("release_lock", h, lock, f"unlock {name}"))
    return steps


def plan_apply_settings(x: SettingsChange) -> Plan:
    """The new settings into the running guest: staged, verified, the replaced files kept on Var, recorded."""
    h = x.host.name
    links = _links(x.inst, x.op_id)
    entry = {"operation": x.op_id, "who": x.owner, "when": x.stamp, "release": x.release, "commit": x.commit,
             "digest_before": x.digest_before, "digest_after": x.digest_after, "files": x.changed,
             "services": list(x.services)}
    restore = Step("restore_settings", h, dict(links),
                   "put back the settings files it replaced (from Var) and remove the ones it added")
    change = Step("apply_settings", h, {**links, "files": x.files, "remove": list(x.remove),
                                        "manifest": x.manifest, "expect_before": x.digest_before, "entry": entry},
                  f"stage {len(x.files)} file(s) in the guest and verify them, keep what they replace on Var, put "
                  f"them in place{f' and remove {len(x.remove)}' if x.remove else ''}, record it on Var",
                  undo=restore)
    notes = [f"changes {', '.join(x.changed)}",
             f"restarts {', '.join(x.services)}" if x.services else "restarts no service",
             "the VM keeps running; no disk is detached or replaced"]
    steps = _around(x.inst, x.host, x.op_id, x.owner, x.services, change, x.health, x.digest_after, "apply settings")
    return Plan(kind="apply-settings", instrument=x.inst.name, vm=x.inst.vm, host=h, from_release=x.release,
                to_release=x.release, steps=steps, notes=notes,
                rollback_point={**entry, "health": x.health})


def plan_restore_settings(x: SettingsRestore) -> Plan:
    """The rollback of an apply-settings: the files it replaced come back from Var, those it added go."""
    restore = Step("restore_settings", x.host.name, _links(x.inst, x.applied_op),
                   f"put back the settings files {x.applied_op} replaced (from Var) and remove the ones it added")
    steps = _around(x.inst, x.host, x.op_id, x.owner, x.services, restore, x.health, x.digest_before,
                    f"restore the settings {x.applied_op} replaced")
    return Plan(kind="settings-restore", instrument=x.inst.name, vm=x.inst.vm, host=x.host.name,
                from_release=x.release, to_release=x.release, steps=steps,
                notes=[f"puts back {', '.join(x.changed)} as before {x.applied_op}",
                       f"restarts {', '.join(x.services)}" if x.services else "restarts no service",
                       "the VM keeps running"],
                rollback_point={"undoes": x.applied_op, "digest_after": x.digest_before})
