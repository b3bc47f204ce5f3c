"""The reimage planner: inputs in, ordered steps out. Pure: it reads and changes nothing.

One plan, three ways to cut it (``ReimageInputs.phase``): ``whole`` (a reimage: everything inside the
downtime), ``prepare`` (only the next generation's disks, made beside the running instrument: nothing
touches the VM) and ``switch`` (the downtime part: stop, back up, swap to the prepared generation, start,
configure, check, record). A prepare followed by a switch does exactly the steps of a whole reimage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.core.hashing import manifest_digest
from imaging.model import layout
from imaging.model.inventory import SLOTS, Host, Instrument
from imaging.model.plan import (
    BACKUPS_KEPT,
    GUEST_TIMEOUT_S,
    SETTINGS_MANIFEST,
    STOP_TIMEOUT_S,
    Artifact,
    Observed,
    Plan,
    generation,
)
from imaging.model.record import seal
from imaging.model.steps import Step


@dataclass(frozen=True)
class ReimageInputs:
    """Everything a reimage plan depends on, gathered before planning."""

    inst: Instrument
    host: Host
    release: str
    apps_version: str
    os_template: Artifact
    apps_image: Artifact
    settings_files: dict[str, str]  # relative path -> base64 of the rendered bytes
    settings_digest: str
    settings_commit: str | None
    observed: Observed
    op_id: str
    owner: str
    stamp: str  # UTC timestamp, compact (20261121T101500Z): names backups and rescue folders
    from_release: str | None = None
    hotfixes: tuple[str, ...] = ()
    migrations: tuple[str, ...] = ()
    settings_version: int | None = None
    settings_before_commit: str | None = None  # the settings branch before migrations (rollback restores it)
    drift_files: dict[str, str] = field(default_factory=dict)  # captured drift for Var (posix rel -> base64)
    post_boot: tuple[dict[str, Any], ...] = ()  # {migration, description, command, marker, record}
    # What the Apps volume must hold, from the image's manifest: file count, bytes, a digest of (path, size)
    # and, with --verify-content, of (path, sha256) (see ``apps_expectation``). None: no manifest known.
    expect_apps: dict[str, Any] | None = None
    phase: str = "whole"  # "whole" | "prepare" | "switch"
    generation: str | None = None  # the prepared generation a switch attaches (default: one of this op)
    prepared_by: str | None = None  # the prepare operation a switch completes
    based_on: str | None = None  # the operation that put the running disks in place (a prepare's baseline)
    # Steps that run once the lock is taken and before the VM is looked at again (adoption: stop, rename and
    # copy the hand-made VM it replaces), and what the rollback point records about them.
    before: tuple[Step, ...] = ()
    adopted: dict[str, Any] | None = None
    # The new OS disk's answer file (images.answer_files.render_instrument_answer): who the guest is at its
    # first boot; its secrets are markers the provider fills from the credential source.
    answer: str = ""
    # A switch: the host note of the generation it takes (``set_host_note``), put back if the switch is undone.
    prepared_note: dict[str, Any] | None = None


PHASES = ("whole", "prepare", "switch")


def _drop_partial(host: str, path: str) -> Step:
    """The undo of a backup: the backup itself is kept (it is the safety copy); only what a kill in the
    middle of it left half-written goes."""
    return Step("remove_partial", host, {"path": path}, f"remove a half-written {path}.partial, if any")


def plan_reimage(x: ReimageInputs) -> Plan:
    """The steps that take one instrument to a release, keeping Var and Data and the previous generation."""
    inst, host, obs = x.inst, x.host, x.observed
    h, vm = host.name, inst.vm
    gen = x.generation or generation(x.release, x.op_id)
    disks = inst.disks.by_role()
    tpl_path = layout.image_path(host, x.os_template.name, x.os_template.sha256)
    apps_master = layout.image_path(host, x.apps_image.name, x.apps_image.sha256)
    new = {role: layout.disk_path(host, inst, role, gen) for role in ("os", "apps", "settings")}
    keep = {role: layout.disk_path(host, inst, role) for role in inst.disks.persistent()}
    var_path = keep["var"]
    lock = {"vm": vm, "lock_path": layout.lock_path(host, inst), "op_id": x.op_id}
    steps: list[Step] = []
    notes: list[str] = []

    def add(action: str, summary: str, undo: Step | None = None, part: str = "switch", **inputs: Any) -> None:
        """A step of ``part`` ("prepare", "switch" or "both"), kept when the plan's phase includes it."""
        if x.phase == "whole" or part in ("both", x.phase):
            steps.append(Step(action=action, host=h, inputs=inputs, summary=summary, undo=undo))

    need = x.os_template.size // 10 + x.apps_image.size // 10 + int(host.reserve_gb * 1024 ** 3)
    add("preflight", f"check host {h} answers, the images of {x.release} are staged and verified, and there "
        "is room", part="both", vm=vm, need_bytes=need,
        artifacts=[{"name": x.os_template.name, "sha256": x.os_template.sha256, "path": tpl_path},
                   {"name": x.apps_image.name, "sha256": x.apps_image.sha256, "path": apps_master}])
    add("acquire_lock", f"lock {inst.name} for this operation ({x.op_id}) so nobody else changes it",
        undo=Step("release_lock", h, dict(lock), f"unlock {inst.name}"), part="both", owner=x.owner, **lock)
    steps.extend(x.before)
    add("check_state", f"check {vm} is as this plan saw it ({obs.power}, {len(obs.disks)} disks): nobody changed it "
        "before the lock was taken", vm=vm, exists=obs.exists, power=obs.power,
        disks={str(k): v for k, v in sorted(obs.disks.items())})
    if not obs.exists:
        notes.append(f"VM {vm} does not exist on {h} yet: it will be created")
    add("ensure_vm", f"{'create' if not obs.exists else 'find'} VM {vm} on {h}", vm=vm, generation=2,
        memory_mb=inst.memory_mb, cpus=inst.cpus, switch=host.switch,
        undo=Step("remove_vm", h, {"vm": vm}, f"remove the new, empty VM {vm}") if x.adopted else None)
    for role, path in keep.items():
        spec = disks[role]
        verb = "keep" if obs.disks.get(SLOTS[role]) == path else "create (if absent, never recreate)"
        add("create_disk", f"{verb} the {spec.label} disk ({role}, persistent, never wiped)",
            path=path, size_gb=spec.size_gb, label=spec.label, role=role)
    was_running = obs.power == "Running"
    add("stop_vm", f"stop {vm} (shut down gracefully, turn off after {STOP_TIMEOUT_S} s)" if was_running
        else f"{vm} is already off: nothing to stop",
        undo=Step("start_vm", h, {"vm": vm}, f"start {vm} again") if was_running else None,
        vm=vm, timeout_s=STOP_TIMEOUT_S)
    old = {role: obs.disks.get(SLOTS[role]) for role in ("os", "apps", "settings")}
    backup_id = f"{x.stamp}-{x.op_id[:8]}"
    if old["settings"]:
        add("backup_volume", f"back up the Settings volume to the host's backup area (last {BACKUPS_KEPT} kept)",
            vm=vm, path=old["settings"], role="settings", label=disks["settings"].label,
            dest_path=layout.backup_path(host, inst, backup_id, "settings"), keep=BACKUPS_KEPT,
            undo=_drop_partial(h, layout.backup_path(host, inst, backup_id, "settings")))
    if obs.exists:
        add("backup_volume", f"back up the Var volume to the host's backup area (last {BACKUPS_KEPT} kept)",
            vm=vm, path=var_path, role="var", label=disks["var"].label,
            dest_path=layout.backup_path(host, inst, backup_id, "var"), keep=BACKUPS_KEPT,
            undo=_drop_partial(h, layout.backup_path(host, inst, backup_id, "var")))
    notes.append(f"the Data disk ({disks['data'].label}) is kept attached and untouched; it is never copied")
    if x.drift_files:
        add("write_volume_files", f"save the settings changes made on the instrument to Var "
            f"({len(x.drift_files)} files under settings-drift\\)", path=var_path, files=x.drift_files)
    if old["os"] and obs.parents.get(SLOTS["os"]):
        # the links, the facility's list, and what the tool itself put on the OS disk (mounts, first boot)
        exclude = [d.link for d in disks.values()] + list(inst.rescue_exclude) + [
            "C:\\volumes", "C:\\ProgramData\\imaging", "C:\\Windows\\Setup\\Scripts"]
        add("rescue_user_files", f"rescue files users left on the old OS disk to "
            f"Var\\rescued\\{x.stamp}\\ (anything not in the template, outside the linked folders)",
            vm=vm, os_path=old["os"], template_path=obs.parents[SLOTS["os"]], var_path=var_path,
            dest_rel=f"rescued/{x.stamp}", exclude=exclude)
    for role in ("os", "apps", "settings"):
        if old[role] and old[role] != new[role]:
            add("detach_disk", f"detach the old {role} disk (kept as the previous generation)",
                undo=Step("attach_disk", h, {"vm": vm, "slot": SLOTS[role], "path": old[role]},
                          f"re-attach the old {role} disk"),
                vm=vm, slot=SLOTS[role], path=old[role])
    add("create_child_disk", f"create the new OS disk as a differencing child of {x.os_template.name}",
        undo=Step("delete_disk", h, {"path": new["os"], "role": "os"}, "delete the new OS disk"),
        part="prepare", path=new["os"], parent_path=tpl_path, role="os")
    add("create_child_disk", f"create the new Apps disk as a differencing child of {x.apps_image.name}",
        undo=Step("delete_disk", h, {"path": new["apps"], "role": "apps"}, "delete the new Apps disk"),
        part="prepare", path=new["apps"], parent_path=apps_master, role="apps")
    add("create_disk", "create the new Settings disk",
        undo=Step("delete_disk", h, {"path": new["settings"], "role": "settings"}, "delete the new Settings disk"),
        part="prepare", path=new["settings"], size_gb=disks["settings"].size_gb, label=disks["settings"].label,
        role="settings")
    add("write_settings", f"write {len(x.settings_files)} settings files rendered from git"
        + (f" (commit {x.settings_commit[:10]})" if x.settings_commit else ""),
        part="prepare", path=new["settings"], files=x.settings_files, manifest_name=SETTINGS_MANIFEST)
    volumes = [{"label": s.label, "mount": layout.mount_point(s.label), "link": s.link} for s in disks.values()]
    add("inject_first_boot", f"write the answer file (computer name {vm}, time zone, locale, local administrator"
        + (f", join {inst.identity.domain}" if inst.identity.domain else "") + ") and the volume configuration "
        "into the new OS disk, for its first boot to apply (offline, on the host)", part="prepare",
        path=new["os"], volumes=volumes, answer=x.answer)
    for role in ("os", "apps", "settings"):
        add("attach_disk", f"attach the new {role} disk at SCSI 0:{SLOTS[role]}",
            undo=Step("detach_disk", h, {"vm": vm, "slot": SLOTS[role], "path": new[role]},
                      f"detach the new {role} disk"),
            vm=vm, slot=SLOTS[role], path=new[role])
    for role, path in keep.items():
        if obs.disks.get(SLOTS[role]) != path:
            add("attach_disk", f"attach the {role} disk at SCSI 0:{SLOTS[role]}",
                undo=Step("detach_disk", h, {"vm": vm, "slot": SLOTS[role], "path": path},
                          f"detach the {role} disk"),
                vm=vm, slot=SLOTS[role], path=path)
    add("start_vm", f"start {vm}", undo=Step("stop_vm", h, {"vm": vm, "timeout_s": STOP_TIMEOUT_S}, f"stop {vm}"),
        vm=vm)
    add("wait_guest", f"wait for Windows setup to finish and the guest {vm} to answer (up to {GUEST_TIMEOUT_S} s)",
        vm=vm, timeout_s=GUEST_TIMEOUT_S, computer_name=vm)
    add("configure_guest", "check each volume is mounted by label under C:\\volumes\\<Label> and linked to "
        + ", ".join(f"{v['link']}" for v in volumes) + " (the first boot did it; anything missing is done now)",
        vm=vm, volumes=volumes)
    for pb in x.post_boot:
        add("run_guest_command", f"post-boot migration {pb['migration']}: {pb['description']}", vm=vm,
            command=pb["command"], var_path=var_path, marker=pb["marker"], record=pb["record"])
    add("health_check", f"check the Apps version is {x.apps_version}, every link leads to its volume and the "
        "Settings are the ones rendered", vm=vm, expect_apps_version=x.apps_version,
        links=[{"link": v["link"], "label": v["label"]} for v in volumes], expect_settings_sha256=x.settings_digest,
        **({"expect_apps": x.expect_apps} if x.expect_apps else {}))
    record = {"release": x.release, "apps_version": x.apps_version, "settings_commit": x.settings_commit,
              "settings_digest": x.settings_digest, "settings_version": x.settings_version,
              "settings_before_commit": x.settings_before_commit,
              "hotfixes": list(x.hotfixes), "migrations": list(x.migrations),
              "operation": x.op_id, "generation": gen, "os_template": x.os_template.name, "when": x.stamp,
              "who": x.owner, "kind": "reimage"}
    add("write_record", f"record on the Var disk that {inst.name} runs {x.release}", vm=vm, record=seal(record),
        operation=x.op_id, undo=Step("restore_record", h, {"vm": vm, "operation": x.op_id},
                                     "put back the record it replaced"))
    note_path = layout.prepared_note_path(host, inst)
    if x.phase == "prepare":  # every operator's status reads it on the host
        note = {"release": x.release, "generation": gen, "operation": x.op_id, "who": x.owner, "when": x.stamp}
        add("set_host_note", f"note on {h} that {inst.name}'s next generation ({x.release}) is prepared",
            part="prepare", path=note_path, note=note,
            undo=Step("set_host_note", h, {"path": note_path, "note": None}, "remove the note"))
    elif x.phase == "switch" and x.prepared_note:
        add("set_host_note", f"remove the note of the prepared generation from {h}: it runs now", path=note_path,
            note=None, undo=Step("set_host_note", h, {"path": note_path, "note": x.prepared_note},
                                 "note again that the generation is prepared"))
    add("release_lock", f"unlock {inst.name}", part="both", **lock)
    if x.phase == "prepare":  # the next generation, made beside the running one: what a switch checks it against
        return Plan(kind="prepare", instrument=inst.name, vm=vm, host=h, from_release=x.from_release,
                    to_release=x.release, steps=steps, notes=notes,
                    rollback_point={"generation": gen, "new": new, "release": x.release,
                                    "settings_digest": x.settings_digest, "settings_commit": x.settings_commit,
                                    "based_on": x.based_on, "hotfixes": list(x.hotfixes)})
    return Plan(kind="reimage", instrument=inst.name, vm=vm, host=h, from_release=x.from_release,
                to_release=x.release, steps=steps, notes=notes,
                rollback_point={"power": obs.power, "disks": {str(k): v for k, v in obs.disks.items()},
                                "release": x.from_release, "generation": gen, "new": new,
                                "settings_before_commit": x.settings_before_commit,
                                **({"prepared": x.prepared_by} if x.prepared_by else {}),
                                **({"adopted": x.adopted} if x.adopted else {})})



def apps_expectation(files: list[dict[str, Any]], *, verify_content: bool = False) -> dict[str, Any]:
    """What the health check compares the Apps volume with, from the image manifest's files: cheap (count,
    bytes, a digest over each path and size) or, with ``verify_content``, also a digest over each file's
    sha256 (every file is then hashed in the guest). Paths are posix, compared as Windows does (any case)."""
    sizes = {f["path"].lower(): str(f["size"]) for f in files}
    out: dict[str, Any] = {"files": len(files), "bytes": sum(int(f["size"]) for f in files),
                           "sizes_digest": manifest_digest(sizes)}
    if verify_content:
        out["content_digest"] = manifest_digest({f["path"].lower(): f["sha256"] for f in files})
    return out
