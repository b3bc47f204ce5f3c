"""What the real Hyper-V step scripts answer, for the loopback endpoint to send back.

Each frame has exactly the keys the script's own text sets (``test_frames_are_what_the_scripts_write``
reads them from the templates), so a test fed by these frames sees what a real host would send, never what
the caller happens to need.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

# A sharing violation as Mount-VHD reports it when another process holds the file (ERROR_SHARING_VIOLATION).
IN_USE_MESSAGE = "The process cannot access the file because it is being used by another process."
IN_USE_ID = "ObjectInUse,Microsoft.Vhd.PowerShell.Cmdlets.MountVhd"


def failure(action: str, error: str, *, error_id: str = "", category: str = "NotSpecified", hresult: int = -2146233088,
            where: str = "At line:40 char:5", changed: bool = False) -> dict[str, Any]:
    """Write-ImagingFailure's frame: the base result plus what it adds."""
    return {"ok": False, "changed": changed, "action": action, "error": error, "where": where,
            "error_id": error_id, "category": category, "hresult": hresult}


def in_use(action: str) -> dict[str, Any]:
    return failure(action, IN_USE_MESSAGE, error_id=IN_USE_ID, category="ResourceBusy", hresult=-2147024864)


def get_state(power: str, disks: list[tuple[int, str, str | None]]) -> dict[str, Any]:
    """get_state.ps1's frame for a VM that exists: its SCSI 0 disks, each with its Get-VHD parent."""
    return {"ok": True, "changed": False, "action": "get_state", "exists": True, "power": power,
            "disks": [{"slot": slot, "path": path, "parent": parent} for slot, path, parent in disks]}


def guest_files(found: dict[str, dict[str, bytes]], hash_over: int = 0) -> dict[str, Any]:
    """read_guest_files.ps1's frame: per path asked for that exists, its files (relative path -> base64;
    "" for a path that is a file), and those larger than ``hash_over`` (when given) by their sha256."""
    def big(data: bytes) -> bool:
        return bool(hash_over) and len(data) > hash_over

    return {"ok": True, "changed": False, "action": "read_guest_files",
            "found": {path: {rel: base64.b64encode(data).decode("ascii") for rel, data in files.items()
                             if not big(data)} for path, files in found.items()},
            "hashed": {path: {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items() if big(data)}
                       for path, files in found.items()}}


def no_vm() -> dict[str, Any]:
    return {"ok": True, "changed": False, "action": "get_state", "exists": False, "power": "Absent", "disks": []}
