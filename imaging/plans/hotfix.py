"""Plans for hotfix, hotfix revert and rollback of the last operation. Computing one is pure.

Like a reimage plan, each is an ordered list of idempotent steps with their undo, so it can be printed,
executed by either provider, resumed and undone. A hotfix plan never stops the VM: files are put in place
on the running guest, the services the manifest names are restarted, and the guest is health-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.model import layout
from imaging.model.hotfixes import Hotfix
from imaging.model.inventory import SLOTS, Host, Instrument
from imaging.model.plan import GUEST_TIMEOUT_S, STOP_TIMEOUT_S, Observed, Plan
from imaging.model.steps import Step


@dataclass(frozen=True)
class HotfixInputs:
    """Everything a hotfix (or revert) plan depends on, gathered before planning."""

    inst: Instrument
    host: Host
    hotfix: Hotfix
    release: str
    apps_generation: str
    package_path: str | None  # the staged package on the host (None for a revert)
    health: dict[str, Any]  # the health_check inputs of the operation that put the running disks in place
    op_id: str
    owner: str
    stamp: str


def _lock(x: HotfixInputs) -> dict[str, Any]:
    return {"vm": x.inst.vm, "lock_path": layout.lock_path(x.host, x.inst), "op_id": x.op_id}


def _common(x: HotfixInputs) -> dict[str, Any]:
    var_link = x.inst.disks.by_role()["var"].link
    return {"vm": x.inst.vm, "hotfix_id": x.hotfix.id,
            "backup_rel": layout.hotfix_backup_rel(x.apps_generation, x.hotfix.id),
            "ledger": layout.hotfix_ledger(var_link), "apps_generation": x.apps_generation}


def _finish(x: HotfixInputs, steps: list[Step], restart: bool) -> None:
    h, vm = x.host.name, x.inst.vm
    if restart and x.hotfix.restart:
        steps.append(Step("restart_services", h, {"vm": vm, "services": list(x.hotfix.restart)},
                          f"restart {', '.join(x.hotfix.restart)} in the guest"))
    steps.append(Step("health_check", h, dict(x.health),
                      f"check the guest is healthy (Apps version {x.health['expect_apps_version']}, links, Settings)"))
    steps.append(Step("release_lock", h, _lock(x), f"unlock {x.inst.name}"))


def plan_hotfix(x: HotfixInputs) -> Plan:
    """Lock, back up and replace the files on the running guest, restart, health-check, unlock."""
    h, name = x.host.name, x.inst.name
    lock = _lock(x)
    common = _common(x)
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {name} for hotfix {x.hotfix.id}",
                  undo=Step("release_lock", h, dict(lock), f"unlock {name}"))]
    files = [{"path": f.path, "sha256": f.sha256} for f in x.hotfix.files]
    entry = {"description": x.hotfix.description, "operation": x.op_id, "who": x.owner, "when": x.stamp,
             "release": x.release}
    revert = Step("revert_hotfix", h, dict(common), f"put back the files {x.hotfix.id} replaced")
    scripts = [{"phase": phase, "path": path} for phase, path in (("pre", x.hotfix.pre_script),
                                                                   ("post", x.hotfix.post_script)) if path]
    steps.append(Step("apply_hotfix", h, {**common, "package_path": x.package_path, "files": files,
                                          "entry": entry, "scripts": scripts},
                      f"back up the {len(files)} file(s) {x.hotfix.id} replaces to Var, put the new ones in "
                      "place on Apps and record it in the ledger on Var", undo=revert))
    _finish(x, steps, restart=True)
    return Plan(kind="hotfix", instrument=name, vm=x.inst.vm, host=h, from_release=x.release,
                to_release=x.release, steps=steps,
                notes=[f"{x.hotfix.id}: {x.hotfix.description}",
                       "the VM keeps running; no disk is detached or replaced"],
                rollback_point={"hotfix": x.hotfix.id, "generation": x.apps_generation,
                                "manifest": x.hotfix.to_dict(), "package_path": x.package_path})


def plan_revert_hotfix(x: HotfixInputs) -> Plan:
    """Lock, put back the exact files the hotfix replaced (from the backup on Var), restart, check, unlock."""
    h, name = x.host.name, x.inst.name
    lock = _lock(x)
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {name} to revert {x.hotfix.id}",
                  undo=Step("release_lock", h, dict(lock), f"unlock {name}")),
             Step("revert_hotfix", h, _common(x),
                  f"put back the files {x.hotfix.id} replaced (from Var) and remove the ones it added")]
    _finish(x, steps, restart=True)
    return Plan(kind="hotfix-revert", instrument=name, vm=x.inst.vm, host=h, from_release=x.release,
                to_release=x.release, steps=steps, notes=[f"revert {x.hotfix.id}: {x.hotfix.description}"],
                rollback_point={"hotfix": x.hotfix.id, "generation": x.apps_generation,
                                "manifest": x.hotfix.to_dict()})


@dataclass(frozen=True)
class RollbackInputs:
    """The last finished operation's rollback point and what the previous generation must look like."""

    inst: Instrument
    host: Host
    observed: Observed
    previous_disks: dict[int, str]  # slot -> path, as before the operation rolled back
    previous_power: str
    previous_release: str
    previous_generation: str | None
    rolled_away: str  # the release being left
    health: dict[str, Any]  # health_check inputs the previous generation passed
    record: dict[str, Any]  # the instrument record of the previous generation
    undone_op: str
    op_id: str
    owner: str
    notes: list[str] = field(default_factory=list)


def plan_rollback(x: RollbackInputs) -> Plan:
    """Re-attach the previous OS, Apps and Settings disks, start, check against the previous release."""
    inst, host, obs = x.inst, x.host, x.observed
    h, vm = host.name, inst.vm
    lock = {"vm": vm, "lock_path": layout.lock_path(host, inst), "op_id": x.op_id}
    steps: list[Step] = []

    def add(action: str, summary: str, undo: Step | None = None, **inputs: Any) -> None:
        steps.append(Step(action=action, host=h, inputs=inputs, summary=summary, undo=undo))

    add("acquire_lock", f"lock {inst.name} for the rollback ({x.op_id})",
        undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"), owner=x.owner, **lock)
    running = obs.power == "Running"
    add("stop_vm", f"stop {vm}" if running else f"{vm} is already off: nothing to stop",
        undo=Step("start_vm", h, {"vm": vm}, f"start {vm} again") if running else None,
        vm=vm, timeout_s=STOP_TIMEOUT_S)
    roles = ("os", "apps", "settings")
    for role in roles:
        cur, prev = obs.disks.get(SLOTS[role]), x.previous_disks.get(SLOTS[role])
        if cur and cur != prev:
            add("detach_disk", f"detach the current {role} disk (kept: it is the generation rolled away from)",
                undo=Step("attach_disk", h, {"vm": vm, "slot": SLOTS[role], "path": cur},
                          f"re-attach the current {role} disk"), vm=vm, slot=SLOTS[role], path=cur)
    for role in roles:
        cur, prev = obs.disks.get(SLOTS[role]), x.previous_disks.get(SLOTS[role])
        if prev and cur != prev:
            add("attach_disk", f"attach the previous {role} disk at SCSI 0:{SLOTS[role]}",
                undo=Step("detach_disk", h, {"vm": vm, "slot": SLOTS[role], "path": prev},
                          f"detach the previous {role} disk"), vm=vm, slot=SLOTS[role], path=prev)
    add("start_vm", f"start {vm}", undo=Step("stop_vm", h, {"vm": vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {vm}"),
        vm=vm)
    add("wait_guest", f"wait for the guest to answer (up to {GUEST_TIMEOUT_S} s)", vm=vm, timeout_s=GUEST_TIMEOUT_S)
    disks = inst.disks.by_role()
    volumes = [{"label": s.label, "mount": layout.mount_point(s.label), "link": s.link} for s in disks.values()]
    add("configure_guest", "mount each volume by label and link it where the software expects it", vm=vm,
        volumes=volumes)
    add("health_check", f"check the Apps version is {x.health['expect_apps_version']} and the Settings are the "
        "previous ones", **x.health)
    add("write_record", f"record on the Var disk that {inst.name} runs {x.previous_release} again", vm=vm,
        record={**x.record, "rolled_back_from": x.rolled_away, "rollback_operation": x.op_id})
    if x.previous_power != "Running":
        add("stop_vm", f"stop {vm} again (it was off before the operation rolled back)",
            undo=Step("start_vm", h, {"vm": vm}, f"start {vm}"), vm=vm, timeout_s=STOP_TIMEOUT_S)
    add("release_lock", f"unlock {inst.name}", **lock)
    return Plan(kind="rollback", instrument=inst.name, vm=vm, host=h, from_release=x.rolled_away,
                to_release=x.previous_release, steps=steps, notes=list(x.notes),
                rollback_point={"power": obs.power, "disks": {str(k): v for k, v in obs.disks.items()},
                                "release": x.rolled_away, "generation": x.previous_generation,
                                "undoes": x.undone_op})
