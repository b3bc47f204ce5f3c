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


def plan_side_switch(x: SideInputs) -> Plan:
    inst, h = x.inst, x.host.name
    new_vm = inst.vm
    run_vm, other_vm = (new_vm, x.legacy_vm) if x.to == "legacy" else (x.legacy_vm, new_vm)
    data = layout.disk_path(x.host, inst, "data")
    slot = SLOTS["data"]
    spec = inst.disks.by_role()["data"]
    lock = {"vm": new_vm, "lock_path": layout.lock_path(x.host, inst), "op_id": x.op_id}
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {inst.name} for this switch ({x.op_id})",
                  undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"))]
    if x.powers.get(run_vm) == "Running":
        steps.append(Step("stop_vm", h, {"vm": run_vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {run_vm}",
                          undo=Step("start_vm", h, {"vm": run_vm}, f"start {run_vm} again")))
    steps.append(Step("detach_disk", h, {"vm": run_vm, "slot": slot, "path": data},
                      f"detach the shared Data disk from {run_vm}",
                      undo=Step("attach_disk", h, {"vm": run_vm, "slot": slot, "path": data},
                                f"attach the Data disk to {run_vm} again")))
    link = spec.link
    if x.to == "legacy":
        aside = link.rsplit("\\", 1)[1] + MOVED_ASIDE
        steps.append(Step("move_aside", h, {"path": x.legacy_os_disk, "folder": link, "new_name": aside},
                          f"move the old machine's own {link} aside (renamed {aside}, kept) for a link to the "
                          "shared Data volume",
                          undo=Step("move_aside", h, {"path": x.legacy_os_disk,
                                                      "folder": link.rsplit("\\", 1)[0] + "\\" + aside,
                                                      "new_name": link.rsplit("\\", 1)[1]},
                                    f"move {aside} back to {link}")))
    steps += [
        Step("attach_disk", h, {"vm": other_vm, "slot": slot, "path": data},
             f"attach the shared Data disk to {other_vm}",
             undo=Step("detach_disk", h, {"vm": other_vm, "slot": slot, "path": data},
                       f"detach the Data disk from {other_vm}")),
        Step("start_vm", h, {"vm": other_vm}, f"start {other_vm}",
             undo=Step("stop_vm", h, {"vm": other_vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {other_vm}")),
        Step("wait_guest", h, {"vm": other_vm, "timeout_s": GUEST_TIMEOUT_S}, f"wait for {other_vm} to answer"),
    ]
    if x.to == "legacy":
        volumes = [{"label": spec.label, "mount": layout.mount_point(spec.label), "link": link}]
        steps.append(Step("configure_guest", h, {"vm": other_vm, "volumes": volumes},
                          f"mount the shared Data volume in {other_vm} and link {link} to it",
                          undo=Step("remove_volume_links", h, {"vm": other_vm, "volumes": volumes},
                                    f"remove the link {link} and the Data mount from {other_vm}")))
    else:
        disks = inst.disks.by_role()
        volumes = [{"label": s.label, "mount": layout.mount_point(s.label), "link": s.link} for s in disks.values()]
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
