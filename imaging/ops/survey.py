"""Survey an instrument's existing VM, read only: what it is, where its data lives, what its users left, and
whether imaging already made it. The first thing to run on a machine the tool did not create; a reimage
refuses such a machine (it would replace its only disk) and names this command.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError
from imaging.core.files import write_json
from imaging.core.stamps import stamp
from imaging.model.inventory import SLOTS, Instrument
from imaging.model.plan import Observed
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import setter_op

FOLDER_KINDS = ("data", "var", "settings", "shared", "software", "system")


@dataclass
class Survey:
    instrument: str
    vm: str
    host: str
    exists: bool
    generation: int | None = None
    power: str | None = None
    disks: list[dict[str, Any]] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_files: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    imaging_layout: bool = False
    verdict: str = ""
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _made_by_imaging(disks: list[dict[str, Any]]) -> bool:
    """Imaging's layout: an OS disk that is a differencing child, and labelled Apps/Var volumes beside it."""
    by_slot = {d["slot"]: d for d in disks}
    os_disk = by_slot.get(SLOTS["os"])
    return bool(os_disk and os_disk.get("parent")) and any(d.get("label") in ("Apps", "Var") for d in disks)


def survey(ctx: Context, inst: Instrument, *, write_report: bool = True) -> Survey:
    """Look at the VM (changes nothing) and say what adoption would have to keep."""
    spec = inst.adopt
    folders = {kind: list(getattr(spec, f"{kind}_folders")) for kind in FOLDER_KINDS}
    res = ctx.providers.run(Step("survey_vm", inst.host, {"vm": inst.vm, "folders": folders,
                                                         "user_roots": list(spec.user_roots),
                                                         "user_folders": list(spec.user_folders)},
                                 f"survey {inst.vm} (read only)"))
    out = Survey(instrument=inst.name, vm=inst.vm, host=inst.host, exists=bool(res.get("exists")))
    if not out.exists:
        out.verdict = "nothing to adopt: no VM of that name; `invoke reimage` creates it"
    else:
        out.generation, out.power = res.get("generation"), res.get("power")
        out.disks, out.folders = res.get("disks", []), res.get("folders", {})
        out.user_files, out.other = res.get("user_files", []), res.get("other", [])
        out.imaging_layout = _made_by_imaging(out.disks)
        out.verdict = ("made by imaging: reimage, prepare and switch apply" if out.imaging_layout else
                       f"hand-made: a reimage would replace its only OS disk, so it is refused; adopt it with "
                       f"`invoke adopt --instrument={inst.name}` (the old VM is kept whole beside the new one)")
    if write_report:
        path = ctx.paths.reports / f"survey-{inst.name}-{stamp()}.json"
        write_json(path, out.to_dict())
        out.report = str(path)
    return out


def is_handmade(ctx: Context, inst: Instrument, observed: Observed) -> bool:
    """A VM whose OS disk is no differencing child and that no operation of imaging set up (or one given back
    to its hand-made VM by `invoke unadopt`)."""
    os_disk = observed.disks.get(SLOTS["os"])
    return bool(observed.exists and os_disk and not observed.parents.get(SLOTS["os"]) and not setter_op(ctx, inst))


def refuse_handmade(ctx: Context, inst: Instrument, observed: Observed) -> None:
    """A hand-made machine: a reimage would replace its only disk (and with it whatever is on it). Refused,
    naming the way."""
    if not is_handmade(ctx, inst, observed):
        return
    os_disk = observed.disks.get(SLOTS["os"])
    raise ImagingError(
        f"{inst.vm} on {inst.host} is a hand-made VM: its OS disk {os_disk} is no differencing child of a "
        f"template and imaging never set it up, so a reimage would replace the only disk it has; nothing was "
        f"changed. See what it holds with `invoke survey --instrument={inst.name}`, then adopt it with "
        f"`invoke adopt --instrument={inst.name}`: the old VM is kept whole as {inst.vm}-legacy and its data is "
        f"copied onto the new one's Var and Data disks")


def make_handmade(ctx: Context, inst: Instrument) -> str:
    """For rehearsal: a hand-made VM for the instrument, as facilities have them today (the lab only; a real
    host already has its machines). Returns the path of its one disk."""
    provider = ctx.providers.for_host(inst.host)
    make = getattr(provider, "make_handmade_vm", None)
    if make is None:
        raise ImagingError(f"{inst.host} is a real host: hand-made VMs are made by people there, not by imaging "
                           "(this is for rehearsing adoption on the lab)")
    return make(inst.host, inst.vm, inst.name)


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
