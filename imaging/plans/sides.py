"""The side-switch planner: an adopted instrument has two VMs, the new one (current) and the hand-made one
kept whole (legacy), and runs one at a time. Pure: what runs now and where the disks are, in; steps, out.

Switching stops the side that runs, moves the shared Data disk to the other VM and starts it. The first time
the legacy side runs again, its own C:\\data is moved aside (renamed, kept) so that a link to the shared Data
volume takes its place: the one change adoption makes inside the old machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.model import layout
from imaging.model.inventory import SLOTS, Host, Instrument
from imaging.model.plan import GUEST_TIMEOUT_S, STOP_TIMEOUT_S, Plan
from imaging.model.steps import Step

SIDES = ("legacy", "current")
MOVED_ASIDE = ".before-imaging"


@dataclass(frozen=True)
class SideInputs:
    inst: Instrument
    host: Host
    to: str  # "legacy" or "current"
    legacy_vm: str
    legacy_os_disk: str
    powers: dict[str, str]  # vm -> power, both sides
    health: dict[str, Any] | None  # the current side's health check inputs (from the operation that set it up)
    op_id: str
    owner: str
    shared_folders: tuple[str, ...] = ()  # the old machine's folders adoption copied onto the Shared disk


def moved_folders(x: SideInputs) -> list[str]:
    """The legacy machine's folders that links to the shared volumes replace (moved aside, kept)."""
    return [x.inst.disks.data.link] + (list(x.shared_folders) if x.inst.disks.shared else [])


def legacy_volumes(x: SideInputs) -> list[dict[str, str]]:
    """In the legacy guest: the Data volume at its old folder, and each shared folder at its place on the
    Shared volume (``sub``: where adoption copied it)."""
    data = x.inst.disks.data
    out = [{"label": data.label, "mount": layout.mount_point(data.label), "link": data.link}]
    if x.inst.disks.shared:
        shared = x.inst.disks.shared
        out += [{"label": shared.label, "mount": layout.mount_point(shared.label), "link": f, "sub": f[3:]}
                for f in x.shared_folders]
    return out


def aside_name(folder: str) -> str:
    return folder.rsplit("\\", 1)[1] + MOVED_ASIDE


def plan_side_switch(x: SideInputs) -> Plan:
    inst, h = x.inst, x.host.name
    new_vm = inst.vm
    run_vm, other_vm = (new_vm, x.legacy_vm) if x.to == "legacy" else (x.legacy_vm, new_vm)
    moving = [r for r in inst.disks.persistent() if r != "var"]  # Data and Shared go to the side that runs
    paths = {role: layout.disk_path(x.host, inst, role) for role in moving}
    lock = {"vm": new_vm, "lock_path": layout.lock_path(x.host, inst), "op_id": x.op_id}
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {inst.name} for this switch ({x.op_id})",
                  undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"))]
    if x.powers.get(run_vm) == "Running":
        steps.append(Step("stop_vm", h, {"vm": run_vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {run_vm}",
                          undo=Step("start_vm", h, {"vm": run_vm}, f"start {run_vm} again")))
    for role, path in paths.items():
        steps.append(Step("detach_disk", h, {"vm": run_vm, "slot": SLOTS[role], "path": path},
                          f"detach the {inst.disks.by_role()[role].label} disk (both sides use it) from {run_vm}",
                          undo=Step("attach_disk", h, {"vm": run_vm, "slot": SLOTS[role], "path": path},
                                    f"attach the {role} disk to {run_vm} again")))
    if x.to == "legacy":
        for folder in moved_folders(x):
            aside = aside_name(folder)
            steps.append(Step("move_aside", h, {"path": x.legacy_os_disk, "folder": folder, "new_name": aside},
                              f"move the old machine's own {folder} aside (renamed {aside}, kept) for a link to "
                              "a shared volume",
                              undo=Step("move_aside", h, {"path": x.legacy_os_disk,
                                                          "folder": folder.rsplit("\\", 1)[0] + "\\" + aside,
                                                          "new_name": folder.rsplit("\\", 1)[1]},
                                        f"move {aside} back to {folder}")))
    for role, path in paths.items():
        steps.append(Step("attach_disk", h, {"vm": other_vm, "slot": SLOTS[role], "path": path},
                          f"attach the {inst.disks.by_role()[role].label} disk to {other_vm}",
                          undo=Step("detach_disk", h, {"vm": other_vm, "slot": SLOTS[role], "path": path},
                                    f"detach the {role} disk from {other_vm}")))
    steps += [
        Step("start_vm", h, {"vm": other_vm}, f"start {other_vm}",
             undo=Step("stop_vm", h, {"vm": other_vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {other_vm}")),
        Step("wait_guest", h, {"vm": other_vm, "timeout_s": GUEST_TIMEOUT_S}, f"wait for {other_vm} to answer"),
    ]
    if x.to == "legacy":
        volumes = legacy_volumes(x)
        steps.append(Step("configure_guest", h, {"vm": other_vm, "volumes": volumes},
                          f"mount the shared volumes in {other_vm} and link "
                          f"{', '.join(v['link'] for v in volumes)} to them",
                          undo=Step("remove_volume_links", h, {"vm": other_vm, "volumes": volumes},
                                    f"remove the links and mounts of the shared volumes from {other_vm}")))
    else:
        volumes = [{"label": s.label, "mount": layout.mount_point(s.label), "link": s.link}
                   for s in inst.disks.by_role().values()]
        steps.append(Step("configure_guest", h, {"vm": other_vm, "volumes": volumes},
                          f"check every volume of {other_vm} is mounted and linked"))
        if x.health:
            steps.append(Step("health_check", h, {**x.health, "vm": other_vm},
                              f"check {other_vm} runs what it ran before the legacy side"))
    steps.append(Step("release_lock", h, dict(lock), f"unlock {inst.name}"))
    return Plan(kind="side", instrument=inst.name, vm=new_vm, host=h, from_release=None, to_release=None,
                steps=steps, notes=[f"{run_vm} stops and {other_vm} starts: one side runs at a time"],
                rollback_point={"to": x.to, "from": "current" if x.to == "legacy" else "legacy",
                                "legacy_vm": x.legacy_vm})


def plan_retirement(inst: Instrument, host: Host, legacy_vm: str, legacy_disks: list[str], op_id: str,
                    owner: str) -> Plan:
    """Delete the legacy VM and its own disks (never a shared disk: only the disks the adoption recorded as
    the old machine's). Nothing here can be undone, so the caller confirms naming each disk."""
    h = host.name
    lock = {"vm": inst.vm, "lock_path": layout.lock_path(host, inst), "op_id": op_id}
    steps = [Step("acquire_lock", h, {**lock, "owner": owner}, f"lock {inst.name} for the retirement ({op_id})",
                  undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"))]
    for slot, path in enumerate(legacy_disks):
        steps.append(Step("detach_disk", h, {"vm": legacy_vm, "slot": slot, "path": path},
                          f"detach {path} from {legacy_vm}",
                          undo=Step("attach_disk", h, {"vm": legacy_vm, "slot": slot, "path": path},
                                    f"attach {path} to {legacy_vm} again")))
    steps.append(Step("remove_vm", h, {"vm": legacy_vm}, f"remove the VM {legacy_vm} (its configuration)"))
    for path in legacy_disks:
        steps.append(Step("delete_disk", h, {"path": path, "role": "os"}, f"delete the old machine's disk {path}"))
    steps.append(Step("release_lock", h, dict(lock), f"unlock {inst.name}"))
    return Plan(kind="retire-legacy", instrument=inst.name, vm=inst.vm, host=h, from_release=None, to_release=None,
                steps=steps, notes=[f"{legacy_vm} and {len(legacy_disks)} disk(s) are deleted for good"],
                rollback_point={"retired": legacy_vm, "disks": list(legacy_disks)})
