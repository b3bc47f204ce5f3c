"""The adoption planner: the steps that turn a hand-made VM into an imaging instrument without losing
anything. Pure: survey and inventory in, steps out.

The old VM is stopped and renamed (kept whole: its disks are never written), then its data is copied off its
own disk, read only, into the new Var and Data volumes: the data folders to Data, the old system's var and
settings folders to ``Var\\legacy\\``, and every user file and unknown file to ``Var\\rescued\\<time>\\files\\``,
each with a listing. The new VM is then made under the old name exactly as a reimage makes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.core.errors import InputError
from imaging.model import layout
from imaging.model.inventory import SLOTS, Host, Instrument
from imaging.model.plan import GUEST_TIMEOUT_S, STOP_TIMEOUT_S, Plan
from imaging.model.steps import Step
from imaging.plans.sides import MOVED_ASIDE

GB = 1024 ** 3


@dataclass(frozen=True)
class AdoptInputs:
    inst: Instrument
    host: Host
    survey: dict[str, Any]  # ``ops.survey.Survey.to_dict()`` of the hand-made VM
    legacy_name: str
    stamp: str


def _rel(winpath: str) -> str:
    """C:\\LabVIEW Modules\\var -> LabVIEW Modules/var: where a copied folder lands under its volume folder."""
    return winpath[3:].replace("\\", "/")


def _var_kinds(x: AdoptInputs) -> tuple[str, ...]:
    """The folder kinds that go to Var\\legacy\\: shared folders too when the instrument has no Shared disk."""
    return ("var", "settings") if "shared" in x.inst.disks.by_role() else ("var", "settings", "shared")


def copies(x: AdoptInputs) -> dict[str, list[dict[str, str]]]:
    """Per destination role (data, var, and shared when the instrument has a Shared disk): what is copied where.
    Shared folders keep their path on the Shared volume, so the legacy side's links can find each one."""
    folders = x.survey["folders"]
    out: dict[str, list[dict[str, str]]] = {
        "data": [{"from": p, "to": ""} for p, f in folders.items() if f["kind"] == "data" and f["exists"]],
        "var": [{"from": p, "to": f"legacy/{_rel(p)}"} for p, f in folders.items()
                if f["kind"] in _var_kinds(x) and f["exists"]]}
    if "shared" in x.inst.disks.by_role():
        out["shared"] = [{"from": p, "to": _rel(p)} for p, f in folders.items()
                         if f["kind"] == "shared" and f["exists"]]
    rescued = f"rescued/{x.stamp}/files"
    out["var"] += [{"from": u["path"], "to": f"{rescued}/{_rel(u['path'])}"}
                   for u in x.survey["user_files"] + x.survey["other"]]
    return out


def check_fits(x: AdoptInputs) -> None:
    """Refuse, before anything stops, data that would not fit the new Var, Data and Shared disks."""
    folders = x.survey["folders"]
    kinds = {"data": ("data",), "var": _var_kinds(x), "shared": ("shared",)}
    need = {role: sum(f["bytes"] for f in folders.values() if f["kind"] in kinds[role]) for role in kinds}
    need["var"] += sum(u["bytes"] for u in x.survey["user_files"] + x.survey["other"])
    disks = x.inst.disks.by_role()
    for role in x.inst.disks.persistent():
        have = disks[role].size_gb * GB
        if need[role] > have * 0.9:  # room for the file system and what the new system adds
            raise InputError(f"{x.inst.vm} holds {need[role] / GB:.1f} GB for its {role} disk, which is "
                             f"{disks[role].size_gb} GB; nothing was stopped", file=x.inst.source,
                             field=f"disks.{role}.size_gb", value=disks[role].size_gb,
                             fix=f"give the {role} disk at least {int(need[role] / GB / 0.9) + 1} GB in the "
                                 "instrument file")


def adoption_steps(x: AdoptInputs) -> tuple[Step, ...]:
    """The steps between taking the lock and making the new VM (see the module docstring)."""
    inst, h, vm, s = x.inst, x.host.name, x.inst.vm, x.survey
    disks = {d["slot"]: d["path"] for d in s["disks"]}
    os_disk = disks[0]
    running = s["power"] == "Running"
    paths = {role: layout.disk_path(x.host, inst, role) for role in inst.disks.persistent()}
    by_role = inst.disks.by_role()
    todo = copies(x)
    steps = [
        Step("check_state", h, {"vm": vm, "exists": True, "power": s["power"],
                                "disks": {str(k): v for k, v in sorted(disks.items())}},
             f"check the hand-made {vm} is as surveyed ({s['power']}, {len(disks)} disk(s))"),
        Step("stop_vm", h, {"vm": vm, "timeout_s": STOP_TIMEOUT_S},
             f"stop the hand-made {vm} (its disks are never written from here on)" if running
             else f"{vm} is already off", undo=Step("start_vm", h, {"vm": vm}, f"start {vm} again") if running
             else None),
        Step("rename_vm", h, {"vm": vm, "new_name": x.legacy_name},
             f"rename {vm} to {x.legacy_name} and keep it whole, off: the instrument's legacy side",
             undo=Step("rename_vm", h, {"vm": x.legacy_name, "new_name": vm}, f"name it {vm} again")),
    ]
    for role, path in paths.items():
        spec = by_role[role]
        steps.append(Step("create_disk", h, {"path": path, "size_gb": spec.size_gb, "label": spec.label,
                                             "role": role},
                          f"create the {spec.label} disk ({role}, persistent, never wiped)"))
    steps.append(Step("copy_from_disk", h, {"source_path": os_disk, "dest_path": paths["data"],
                                            "copies": todo["data"], "listing_rel": f"adopted/{x.stamp}.json"},
                      f"copy {', '.join(c['from'] for c in todo['data']) or 'no data folder'} to the Data disk, "
                      "verified by sha256 (the old disk is read only)"))
    if "shared" in todo:
        steps.append(Step("copy_from_disk", h, {"source_path": os_disk, "dest_path": paths["shared"],
                                                "copies": todo["shared"], "listing_rel": f"adopted/{x.stamp}.json"},
                          f"copy {', '.join(c['from'] for c in todo['shared']) or 'no shared folder'} to the "
                          f"{by_role['shared'].label} disk both sides use, verified by sha256"))
    steps.append(Step("copy_from_disk", h, {"source_path": os_disk, "dest_path": paths["var"], "copies": todo["var"],
                                            "listing_rel": f"rescued/{x.stamp}/rescued.json"},
                      f"copy the old system's var and settings folders to Var\\legacy\\ and "
                      f"{len(s['user_files']) + len(s['other'])} user and unknown file(s) to "
                      f"Var\\rescued\\{x.stamp}\\, verified by sha256, with a list"))
    return tuple(steps)


@dataclass(frozen=True)
class UnadoptInputs:
    inst: Instrument
    host: Host
    legacy_vm: str
    legacy_os_disk: str
    shared_folders: tuple[str, ...]  # the old machine's folders adoption copied onto the Shared disk
    side: str  # which side runs now: "current" or "legacy"
    powers: dict[str, str]  # vm -> power, both sides
    new_disks: dict[int, str]  # slot -> path of the disks attached to the new VM
    legacy_disks: dict[int, str]  # slot -> path of the disks attached to the legacy VM
    stamp: str
    op_id: str
    owner: str


# What a volume's root holds that is the file system's or imaging's own, never copied back into a folder.
VOLUME_OWN = ("adopted", "System Volume Information", "$RECYCLE.BIN")


def plan_unadoption(x: UnadoptInputs) -> Plan:
    """Give the instrument back to its hand-made VM: the side that runs stops; the new VM is removed (its
    configuration only: every disk of it stays on the host, listed); the old machine's folders that links
    replaced come back (moved back from aside, the links gone); everything on the Data and Shared volumes is
    copied back into them, verified by sha256, a file it replaces kept under
    ``C:\\ProgramData\\imaging\\unadopted-<time>\\replaced\\``; then the old VM takes its name again and starts.
    Nothing is deleted: the Var, Data and Shared disks stay on the host for as long as the facility wants.
    A failure undoes every step back to the side that ran."""
    inst, h, vm, lvm = x.inst, x.host.name, x.inst.vm, x.legacy_vm
    lock = {"vm": vm, "lock_path": layout.lock_path(x.host, inst), "op_id": x.op_id}
    steps = [Step("acquire_lock", h, {**lock, "owner": x.owner}, f"lock {inst.name} for the unadoption ({x.op_id})",
                  undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"))]
    for name in (vm, lvm):
        if x.powers.get(name) == "Running":
            steps.append(Step("stop_vm", h, {"vm": name, "timeout_s": STOP_TIMEOUT_S}, f"stop {name}",
                              undo=Step("start_vm", h, {"vm": name}, f"start {name} again")))
    moving = {SLOTS[r]: layout.disk_path(x.host, inst, r) for r in inst.disks.persistent() if r != "var"}
    holder = lvm if x.side == "legacy" else vm
    attached = {**x.new_disks, **({s: p for s, p in x.legacy_disks.items() if s in moving} if x.side == "legacy"
                                  else {})}
    for slot, path in sorted(attached.items()):
        name = holder if slot in moving and x.side == "legacy" else vm
        steps.append(Step("detach_disk", h, {"vm": name, "slot": slot, "path": path},
                          f"detach {path} from {name} (kept on the host)",
                          undo=Step("attach_disk", h, {"vm": name, "slot": slot, "path": path},
                                    f"attach {path} to {name} again")))
    steps.append(Step("remove_vm", h, {"vm": vm}, f"remove the new VM {vm} (its configuration; its disks stay)",
                      undo=Step("ensure_vm", h, {"vm": vm, "generation": 2, "memory_mb": inst.memory_mb,
                                                 "cpus": inst.cpus, "switch": x.host.switch},
                                f"create the VM {vm} again")))
    data = inst.disks.data
    folders = [data.link] + (list(x.shared_folders) if inst.disks.shared else [])
    for folder in folders:
        parent, name = folder.rsplit("\\", 1)
        aside = name + MOVED_ASIDE
        steps.append(Step("move_aside", h, {"path": x.legacy_os_disk, "folder": f"{parent}\\{aside}",
                                            "new_name": name},
                          f"move the old machine's own {aside} back to {folder} (the link in its place goes)",
                          undo=Step("move_aside", h, {"path": x.legacy_os_disk, "folder": folder, "new_name": aside},
                                    f"move {folder} aside again")))
    mounts = [layout.mount_point(data.label)] + ([layout.mount_point(inst.disks.shared.label)]
                                                 if inst.disks.shared else [])
    steps.append(Step("remove_disk_links", h, {"path": x.legacy_os_disk, "links": mounts},
                      f"remove the mount folders {', '.join(mounts)} the legacy side used from the old disk (links "
                      "only; a later switch to legacy makes them again)"))
    keep = f"ProgramData/imaging/unadopted-{x.stamp}"

    def copy_back(role: str, copies: list[dict[str, Any]], summary: str) -> None:
        listing = f"{keep}/{role}.json"
        steps.append(Step("copy_from_disk", h, {"source_path": moving[SLOTS[role]], "dest_path": x.legacy_os_disk,
                                                "copies": copies, "listing_rel": listing}, summary,
                          undo=Step("undo_copy", h, {"dest_path": x.legacy_os_disk, "listing_rel": listing},
                                    f"take back what the copy from the {role} volume wrote")))

    copy_back("data", [{"from": "C:\\", "to": data.link[3:].replace("\\", "/"), "skip": list(VOLUME_OWN),
                        "replaced_to": f"{keep}/replaced"}],
              f"copy everything on the Data volume back into {data.link} (new runs included), verified by sha256; "
              f"a file it replaces is kept under C:\\{keep.replace('/', chr(92))}\\replaced")
    if inst.disks.shared and x.shared_folders:
        copy_back("shared", [{"from": f, "to": f[3:].replace("\\", "/"), "replaced_to": f"{keep}/replaced"}
                             for f in x.shared_folders],
                  f"copy {', '.join(x.shared_folders)} back from the {inst.disks.shared.label} volume, verified by "
                  "sha256")
    steps += [
        Step("rename_vm", h, {"vm": lvm, "new_name": vm}, f"rename {lvm} back to {vm}",
             undo=Step("rename_vm", h, {"vm": vm, "new_name": lvm}, f"rename {vm} to {lvm} again")),
        Step("start_vm", h, {"vm": vm}, f"start the old machine {vm}",
             undo=Step("stop_vm", h, {"vm": vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {vm}")),
        Step("wait_guest", h, {"vm": vm, "timeout_s": GUEST_TIMEOUT_S}, f"wait for {vm} to answer"),
        Step("release_lock", h, dict(lock), f"unlock {inst.name}"),
    ]
    kept = sorted(set(x.new_disks.values()) | set(moving.values()))
    return Plan(kind="unadopt", instrument=inst.name, vm=vm, host=h, from_release=None, to_release=None,
                steps=steps, notes=[f"{lvm} becomes {vm} again and runs; these disks stay on {h}, detached: "
                                    + ", ".join(kept)],
                rollback_point={"unadopted": lvm, "kept_disks": kept, "side": x.side})
