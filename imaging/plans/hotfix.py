"""Plans for a hotfix and its revert. Computing one is pure.

Like a reimage plan, each is an ordered list of idempotent steps with their undo, so it can be printed,
executed by either provider, resumed and undone. A hotfix plan never stops the VM: the services the
manifest names are stopped (Windows cannot replace a running program's files), the files are put in place
on the running guest, the services are started again, and the guest is health-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.model import layout
from imaging.model.hotfixes import Hotfix
from imaging.model.inventory import Host, Instrument
from imaging.model.plan import Plan
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


def _stop(x: HotfixInputs, steps: list[Step]) -> None:
    """The services the package names stop before any file changes (the undo starts them again)."""
    if x.hotfix.restart:
        services = {"vm": x.inst.vm, "services": list(x.hotfix.restart)}
        steps.append(Step("stop_services", x.host.name, services,
                          f"stop {', '.join(x.hotfix.restart)} in the guest (their files are replaced next)",
                          undo=Step("start_services", x.host.name, dict(services),
                                    f"start {', '.join(x.hotfix.restart)} again")))


def _finish(x: HotfixInputs, steps: list[Step]) -> None:
    h, vm = x.host.name, x.inst.vm
    if x.hotfix.restart:  # undone by a stop, so that the file undo after it finds them stopped
        services = {"vm": vm, "services": list(x.hotfix.restart)}
        steps.append(Step("start_services", h, services, f"start {', '.join(x.hotfix.restart)} in the guest",
                          undo=Step("stop_services", h, dict(services),
                                    f"stop {', '.join(x.hotfix.restart)} again")))
    steps.append(Step("health_check", h, dict(x.health),
                      f"check the guest is healthy (Apps version {x.health['expect_apps_version']}, links, Settings)"))
    steps.append(Step("release_lock", h, _lock(x), f"unlock {x.inst.name}"))


def plan_hotfix(x: HotfixInputs) -> Plan:
    """Lock, stop the services it names, back up and replace the files on the running guest, start them,
    health-check, unlock."""
    h, name = x.host.name, x.inst.name
    lock = _lock(x)
    common = _common(x)
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {name} for hotfix {x.hotfix.id}",
                  undo=Step("release_lock", h, dict(lock), f"unlock {name}"))]
    files = [{"path": f.path, "sha256": f.sha256} for f in x.hotfix.files]
    entry = {"description": x.hotfix.description, "operation": x.op_id, "who": x.owner, "when": x.stamp,
             "release": x.release}
    revert = Step("revert_hotfix", h, dict(common), f"put back the files {x.hotfix.id} replaced")
    _stop(x, steps)
    scripts = [{"phase": phase, "path": path} for phase, path in (("pre", x.hotfix.pre_script),
                                                                   ("post", x.hotfix.post_script)) if path]
    steps.append(Step("apply_hotfix", h, {**common, "package_path": x.package_path, "files": files,
                                          "entry": entry, "scripts": scripts},
                      f"back up the {len(files)} file(s) {x.hotfix.id} replaces to Var, put the new ones in "
                      "place on Apps and record it in the ledger on Var", undo=revert))
    _finish(x, steps)
    return Plan(kind="hotfix", instrument=name, vm=x.inst.vm, host=h, from_release=x.release,
                to_release=x.release, steps=steps,
                notes=[f"{x.hotfix.id}: {x.hotfix.description}",
                       "the VM keeps running; no disk is detached or replaced"],
                rollback_point={"hotfix": x.hotfix.id, "generation": x.apps_generation,
                                "manifest": x.hotfix.to_dict(), "package_path": x.package_path})


def plan_revert_hotfix(x: HotfixInputs) -> Plan:
    """Lock, stop the services it names, put back the exact files the hotfix replaced (from the backup on
    Var), start them, check, unlock."""
    h, name = x.host.name, x.inst.name
    lock = _lock(x)
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {name} to revert {x.hotfix.id}",
                  undo=Step("release_lock", h, dict(lock), f"unlock {name}")),
             ]
    _stop(x, steps)
    steps.append(Step("revert_hotfix", h, _common(x),
                      f"put back the files {x.hotfix.id} replaced (from Var) and remove the ones it added"))
    _finish(x, steps)
    return Plan(kind="hotfix-revert", instrument=name, vm=x.inst.vm, host=h, from_release=x.release,
                to_release=x.release, steps=steps, notes=[f"revert {x.hotfix.id}: {x.hotfix.description}"],
                rollback_point={"hotfix": x.hotfix.id, "generation": x.apps_generation,
                                "manifest": x.hotfix.to_dict()})
