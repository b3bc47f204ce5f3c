"""Names and Windows paths of everything the tool places on a host, decided in one place."""

from __future__ import annotations

from pathlib import PureWindowsPath

from imaging.core.quoting import check_name
from imaging.model.inventory import PERSISTENT_ROLES, Host, Instrument


def _join(root: str, *parts: str) -> str:
    return str(PureWindowsPath(root, *parts))


def staged_name(name: str, sha256: str, suffix: str = ".vhdx") -> str:
    check_name(name, field="artifact name")
    return f"{name}-{sha256[:12]}{suffix}"


def image_path(host: Host, name: str, sha256: str) -> str:
    """A staged, read-only parent image on the host."""
    return _join(host.storage_root, "images", staged_name(name, sha256))


def share_path(host: Host, name: str, sha256: str, suffix: str) -> str:
    """Where the host pulls an artifact from (the image share)."""
    return _join(host.share, staged_name(name, sha256, suffix))


def instrument_dir(host: Host, inst: Instrument) -> str:
    return _join(host.storage_root, "instruments", inst.vm)


def disk_path(host: Host, inst: Instrument, role: str, generation: str | None = None) -> str:
    """OS, Apps and Settings disks are per generation; Var and Data have exactly one, forever."""
    if role in PERSISTENT_ROLES:
        return _join(instrument_dir(host, inst), f"{inst.vm}-{role}.vhdx")
    if not generation:
        raise ValueError(f"a {role} disk needs a generation")
    check_name(generation, field="generation")
    return _join(instrument_dir(host, inst), f"{inst.vm}-{role}-{generation}.vhdx")


def backup_path(host: Host, inst: Instrument, backup_id: str, role: str) -> str:
    check_name(backup_id, field="backup id")
    return _join(host.storage_root, "backups", inst.vm, f"{backup_id}-{role}")


def prepared_note_path(host: Host, inst: Instrument) -> str:
    """The note of the generation `invoke prepare` made beside the running one (until a switch takes it)."""
    return _join(instrument_dir(host, inst), "prepared.json")


def lock_path(host: Host, inst: Instrument) -> str:
    return _join(host.storage_root, "locks", f"{inst.vm}.lock")


def mount_point(label: str) -> str:
    return _join("C:\\volumes", label)


def hotfix_stage_path(host: Host, name: str, sha256: str) -> str:
    """A staged hotfix package on the host (a tar, read-only), beside the images."""
    return _join(host.storage_root, "hotfixes", staged_name(name, sha256, ".tar"))


HOTFIX_LEDGER = "imaging\\hotfixes.json"  # on the Var volume, under its link (C:\Instrument\Var)
HOTFIX_BACKUPS = "imaging/hotfix-backups"  # on the Var volume: <generation>/<hotfix id>/


def hotfix_ledger(var_link: str) -> str:
    return _join(var_link, HOTFIX_LEDGER)


def hotfix_backup_rel(generation: str, hotfix_id: str) -> str:
    check_name(generation, field="generation")
    check_name(hotfix_id, field="hotfix id")
    return f"{HOTFIX_BACKUPS}/{generation}/{hotfix_id}"


SETTINGS_LEDGER = "imaging/settings.json"  # on the Var volume: the settings changes applied to the running guest
SETTINGS_BACKUPS = "imaging/settings-backups"  # on the Var volume: <operation>/, what each change replaced


def settings_backup_rel(op_id: str) -> str:
    """Where `apply-settings` keeps the files it replaces (on Var), for `invoke rollback` to put back."""
    check_name(op_id, field="operation id")
    return f"{SETTINGS_BACKUPS}/{op_id}"
