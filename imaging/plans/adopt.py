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
from imaging.model.inventory import Host, Instrument
from imaging.model.plan import STOP_TIMEOUT_S
from imaging.model.steps import Step

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


def copies(x: AdoptInputs) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(to Data, to Var): what is copied where."""
    folders = x.survey["folders"]
    to_data = [{"from": p, "to": ""} for p, f in folders.items() if f["kind"] == "data" and f["exists"]]
    to_var = [{"from": p, "to": f"legacy/{_rel(p)}"} for p, f in folders.items()
              if f["kind"] in ("var", "settings") and f["exists"]]
    rescued = f"rescued/{x.stamp}/files"
    to_var += [{"from": u["path"], "to": f"{rescued}/{_rel(u['path'])}"}
               for u in x.survey["user_files"] + x.survey["other"]]
    return to_data, to_var


def check_fits(x: AdoptInputs) -> None:
    """Refuse, before anything stops, data that would not fit the new Var and Data disks."""
    folders = x.survey["folders"]
    data = sum(f["bytes"] for f in folders.values() if f["kind"] == "data")
    var = sum(f["bytes"] for f in folders.values() if f["kind"] in ("var", "settings")) + \
        sum(u["bytes"] for u in x.survey["user_files"] + x.survey["other"])
    disks = x.inst.disks.by_role()
    for role, need in (("data", data), ("var", var)):
        have = disks[role].size_gb * GB
        if need > have * 0.9:  # room for the file system and what the new system adds
            raise InputError(f"{x.inst.vm} holds {need / GB:.1f} GB for its {role} disk, which is "
                             f"{disks[role].size_gb} GB; nothing was stopped", file=x.inst.source,
                             field=f"disks.{role}.size_gb", value=disks[role].size_gb,
                             fix=f"give the {role} disk at least {int(need / GB / 0.9) + 1} GB in the instrument file")


def adoption_steps(x: AdoptInputs) -> tuple[Step, ...]:
    """The steps between taking the lock and making the new VM (see the module docstring)."""
    inst, h, vm, s = x.inst, x.host.name, x.inst.vm, x.survey
    disks = {d["slot"]: d["path"] for d in s["disks"]}
    os_disk = disks[0]
    running = s["power"] == "Running"
    var_path, data_path = layout.disk_path(x.host, inst, "var"), layout.disk_path(x.host, inst, "data")
    by_role = inst.disks.by_role()
    to_data, to_var = copies(x)
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
    for role, path in (("var", var_path), ("data", data_path)):
        spec = by_role[role]
        steps.append(Step("create_disk", h, {"path": path, "size_gb": spec.size_gb, "label": spec.label,
                                             "role": role},
                          f"create the {spec.label} disk ({role}, persistent, never wiped)"))
    steps.append(Step("copy_from_disk", h, {"source_path": os_disk, "dest_path": data_path, "copies": to_data,
                                            "listing_rel": f"adopted/{x.stamp}.json"},
                      f"copy {', '.join(c['from'] for c in to_data) or 'no data folder'} to the Data disk, "
                      "verified by sha256 (the old disk is read only)"))
    steps.append(Step("copy_from_disk", h, {"source_path": os_disk, "dest_path": var_path, "copies": to_var,
                                            "listing_rel": f"rescued/{x.stamp}/rescued.json"},
                      f"copy the old system's var and settings folders to Var\\legacy\\ and "
                      f"{len(s['user_files']) + len(s['other'])} user and unknown file(s) to "
                      f"Var\\rescued\\{x.stamp}\\, verified by sha256, with a list"))
    return tuple(steps)
