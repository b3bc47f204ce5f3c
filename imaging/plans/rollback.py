"""The rollback planner: back to the generation that ran before the last reimage. Pure.

The previous OS, Apps and Settings disks are re-attached (nothing is copied, nothing can be lost), Var and
Data stay attached and untouched, and the plan is an ordered list of idempotent steps with their undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.model import layout
from imaging.model.inventory import SLOTS, Host, Instrument
from imaging.model.plan import GUEST_TIMEOUT_S, STOP_TIMEOUT_S, Observed, Plan
from imaging.model.record import seal
from imaging.model.steps import Step


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
    add("check_state", f"check {vm} is as this plan saw it ({obs.power}, {len(obs.disks)} disks): nobody changed it "
        "before the lock was taken", vm=vm, exists=obs.exists, power=obs.power,
        disks={str(k): v for k, v in sorted(obs.disks.items())})
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
        record=seal({**x.record, "rolled_back_from": x.rolled_away, "rollback_operation": x.op_id}),
        operation=x.op_id, undo=Step("restore_record", h, {"vm": vm, "operation": x.op_id},
                                     "put back the record it replaced"))
    if x.previous_power != "Running":
        add("stop_vm", f"stop {vm} again (it was off before the operation rolled back)",
            undo=Step("start_vm", h, {"vm": vm}, f"start {vm}"), vm=vm, timeout_s=STOP_TIMEOUT_S)
    add("release_lock", f"unlock {inst.name}", **lock)
    return Plan(kind="rollback", instrument=inst.name, vm=vm, host=h, from_release=x.rolled_away,
                to_release=x.previous_release, steps=steps, notes=list(x.notes),
                rollback_point={"power": obs.power, "disks": {str(k): v for k, v in obs.disks.items()},
                                "release": x.rolled_away, "generation": x.previous_generation,
                                "undoes": x.undone_op})
