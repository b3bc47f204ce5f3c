"""Steps: the unit of every plan, shared by the planner and every provider.

A step is data (an action name, the host it runs on, its inputs, plain words for the dry run and the
inverse step), so one plan can be printed, carried out by either provider, resumed after a crash and undone.
Each action is idempotent: providers check before they change and report whether they changed anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Every action a plan may use, with the inputs it requires. Providers implement exactly these.
ACTIONS: dict[str, tuple[str, ...]] = {
    "preflight": ("vm", "artifacts", "need_bytes"),
    "acquire_lock": ("vm", "lock_path", "op_id", "owner"),
    "release_lock": ("vm", "lock_path", "op_id"),
    "ensure_vm": ("vm", "generation", "memory_mb", "cpus", "switch"),
    "get_state": ("vm",),
    # Read only: a host's readiness (`invoke doctor`): Hyper-V module, storage root and free space, the image
    # share seen from the host (the second hop), WinRM quotas against max_concurrent, and which VMs exist.
    "doctor_host": ("storage_root", "share", "need_bytes", "max_concurrent", "vms"),
    # Read only: what a (possibly hand-made) VM is and holds, by folder kind (data, var, settings, software,
    # system), with user files in profile folders and everything else it found.
    "survey_vm": ("vm", "folders", "user_roots", "user_folders"),
    # Adoption of a hand-made VM: it is renamed and kept whole (its disks never change); its data is copied
    # off its own disk, read only while it is off, into the new Var and Data volumes, verified by sha256.
    "rename_vm": ("vm", "new_name"),
    "remove_vm": ("vm",),
    "copy_from_disk": ("source_path", "dest_path", "copies", "listing_rel"),
    # The one change adoption makes inside the old machine, offline: a folder moved aside (renamed) so a link
    # to the shared volume can take its place; moving it back is its undo.
    "move_aside": ("path", "folder", "new_name"),
    # Unadoption, offline on the old machine's disk: the mount folders its legacy side used go (links only).
    "remove_disk_links": ("path", "links"),
    # The undo of a copy_from_disk into a disk with files of its own: by its listing, what it wrote goes and
    # what it replaced comes back.
    "undo_copy": ("dest_path", "listing_rel"),
    # Observe under the lock: what the plan was made from must still be what the host shows.
    "check_state": ("vm", "exists", "power", "disks"),
    "stop_vm": ("vm", "timeout_s"),
    "start_vm": ("vm",),
    "wait_guest": ("vm", "timeout_s"),
    "stage_artifact": ("name", "sha256", "share_path", "dest_path"),
    "create_child_disk": ("path", "parent_path", "role"),
    "create_disk": ("path", "size_gb", "label", "role"),
    "delete_disk": ("path", "role"),
    # What a step killed while writing ``path`` left at ``path.partial``: removed by the undo.
    "remove_partial": ("path",),
    "attach_disk": ("vm", "slot", "path"),
    "detach_disk": ("vm", "slot", "path"),
    "backup_volume": ("vm", "path", "role", "label", "dest_path", "keep"),
    "rescue_user_files": ("vm", "os_path", "template_path", "var_path", "dest_rel", "exclude"),
    # files: relative path -> base64 of the bytes (settings are bytes: binary, CRLF, UTF-16 files too)
    "write_settings": ("path", "files", "manifest_name"),
    # Offline, on the host, into a new OS disk no VM uses yet: the volume configuration its first boot applies
    # (mounts by label and links), so the guest step after the boot only checks it.
    "inject_first_boot": ("path", "volumes", "answer"),
    "configure_guest": ("vm", "volumes"),
    # Its undo in a guest that is not imaging's (a legacy side): the links to the volumes and their mounts go.
    "remove_volume_links": ("vm", "volumes"),
    "health_check": ("vm", "expect_apps_version", "links", "expect_settings_sha256"),
    # The record it replaces is kept beside it (record.previous.json), marked with the operation that wrote.
    "write_record": ("vm", "record", "operation"),
    # The undo of write_record: the record that operation replaced comes back (none kept by it: nothing to do).
    "restore_record": ("vm", "operation"),
    # Hotfixes: files put in place on the running guest's Apps volume, the replaced ones backed up on Var.
    "apply_hotfix": ("vm", "hotfix_id", "package_path", "files", "backup_rel", "ledger", "apps_generation",
                     "entry", "scripts"),
    "revert_hotfix": ("vm", "hotfix_id", "backup_rel", "ledger", "apps_generation"),
    # The services a hotfix names: stopped before its files are replaced (a running program's files cannot
    # be), started after; the undo of a stop is a start.
    "stop_services": ("vm", "services"),
    "start_services": ("vm", "services"),
    # A settings-only change of the running guest: the new files are staged in the guest and verified, the
    # ones they replace kept on Var (backup_rel), then put in place with the volume's manifest and recorded in
    # the settings ledger on Var; restore_settings puts back what one operation replaced.
    "apply_settings": ("vm", "settings_link", "var_link", "backup_rel", "ledger_rel", "operation", "files",
                       "remove", "manifest", "expect_before", "entry"),
    "restore_settings": ("vm", "settings_link", "var_link", "backup_rel", "ledger_rel", "operation"),
    # Build hosts (release management): images are made here, then registered in the store.
    "build_apps_disk": ("vhd_path", "source_path", "label", "size_gb", "work_root", "expect_version"),
    "build_template": ("vm", "version", "iso_path", "image_index", "vhd_path", "work_root", "size_gb", "memory_mb",
                       "switch", "unattend", "provision", "timeout_s"),
    "remove_image": ("path", "sha256"),
    # A built image leaves its build host by the image share (a file copy, never WinRM), verified by sha256.
    "export_image": ("path", "share_path", "sha256"),
    # Read only. A volume mounted on the host (its VM off; "only" limits it to some relative paths), or
    # files and folders inside a running guest over PowerShell Direct (a running VM holds its disks).
    "read_volume": ("path", "max_bytes"),
    "read_guest_files": ("vm", "paths", "max_bytes"),
    # Small files on the host itself (an instrument's lock, its prepared note), read only: what every
    # operator's `invoke status` reads, whatever its own journal holds.
    "read_host_files": ("paths", "max_bytes"),
    # A note on the host beside the instrument's disks (prepared.json: the generation `invoke prepare` made),
    # written whole or, with note None, removed.
    "set_host_note": ("path", "note"),
    "write_volume_files": ("path", "files"),
    "run_guest_command": ("vm", "command", "var_path", "marker", "record"),
}

# Actions that only look and never change anything (their "changed" is always false).
CHECK_ACTIONS = frozenset({"preflight", "get_state", "doctor_host", "survey_vm", "check_state", "wait_guest",
                           "health_check", "read_volume", "read_guest_files", "read_host_files"})


@dataclass(frozen=True)
class Step:
    """One idempotent action on one host; ``undo`` is the step that reverses it (None: nothing to undo)."""

    action: str
    host: str
    inputs: dict[str, Any]
    summary: str
    undo: Step | None = None
    # Steps after the "point of no return" for the running VM (it has been stopped) are undone on failure.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        required = ACTIONS.get(self.action)
        if required is None:
            raise ValueError(f"unknown step action {self.action!r}")
        missing = [k for k in required if k not in self.inputs]
        if missing:
            raise ValueError(f"step {self.action} lacks inputs {missing}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "host": self.host,
            "inputs": self.inputs,
            "summary": self.summary,
            "undo": self.undo.to_dict() if self.undo else None,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(action=d["action"], host=d["host"], inputs=d["inputs"], summary=d["summary"],
                   undo=cls.from_dict(d["undo"]) if d.get("undo") else None, meta=d.get("meta") or {})

    def key(self) -> str:
        """A stable identity for journaling and resume."""
        return json.dumps({"a": self.action, "h": self.host, "i": self.inputs}, sort_keys=True)
