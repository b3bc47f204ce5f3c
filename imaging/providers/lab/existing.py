"""The lab's machines that imaging did not make: hand-made instrument PCs (one OS disk holding everything,
as facilities have them today), made on request for rehearsal, and the read-only survey of any VM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.files import read_json, write_json
from imaging.providers.lab.fs import guest_rel

# A hand-made instrument PC: Windows, the old control system (LabVIEW modules, its var folder), data,
# and what its users left on desktops. Relative to C:\, with file sizes (the lab writes that many bytes).
HANDMADE_FILES: dict[str, int] = {
    "Windows/System32/config/SYSTEM": 262144,
    "Windows/System32/drivers/etc/hosts": 824,
    "Program Files/Common Files/old-vendor/dll.bin": 40960,
    "pagefile.sys": 131072,
    "LabVIEW Modules/dae/dae.vi": 65536,
    "LabVIEW Modules/var/run_number.txt": 6,
    "LabVIEW Modules/var/autosave/motors.sav": 120,
    "Instrument/Settings/instrument.ini": 300,
    "data/{name}00012345.nxs": 500000,
    "data/{name}00012346.nxs": 480000,
    "Users/operator/Desktop/shift-notes.txt": 220,
    "Users/operator/Documents/alignment.xlsx": 9000,
    "Temp/old-installer.log": 4000,
}


def _fill(path: Path, size: int, seed: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = (seed.encode() + b"\n") * (size // (len(seed) + 1) + 1)
    path.write_bytes(pattern[:size])


class ExistingMachines:
    """Mixin of LabProvider: hand-made VMs for rehearsals, and the survey action."""

    def make_handmade_vm(self, host: str, vm: str, name: str, drive: str = "D") -> str:
        """A generation-1 VM with one OS disk (no parent) holding everything, running. Returns its disk path.
        Refuses a VM that exists: the lab never overwrites a machine."""
        if self._vm_file(host, vm).exists():
            raise ProviderError(f"VM {vm} exists on {host}; the lab makes hand-made VMs only where there is none",
                                host=host, step="make_handmade_vm")
        disk = f"{drive}:\\Hyper-V\\{vm}\\{vm}.vhdx"
        d = self.path(host, disk)
        for rel, size in HANDMADE_FILES.items():
            rel = rel.format(name=name)
            _fill(d / "content" / rel, size, f"{vm}:{rel}")
        write_json(d / "disk.json", {"role": "handmade", "label": None, "parent": None, "read_only": False,
                                     "size_gb": 127, "attached_to": vm})
        write_json(self._vm_file(host, vm), {"name": vm, "power": "Running", "slots": {"0": disk}, "generation": 1,
                                             "memory_mb": 8192, "cpus": 4, "switch": "Instruments",
                                             "power_history": []})
        return disk

    def _do_survey_vm(self, host: str, vm: str, folders: dict[str, list[str]], user_roots: list[str],
                      user_folders: list[str]) -> dict:
        """What a VM is and holds, read only: generation, power, disks (size, parent), each named folder's
        files and bytes, user files in profile folders, and everything else outside the known folders."""
        f = self._vm_file(host, vm)
        if not f.exists():
            return {"changed": False, "exists": False}
        rec = read_json(f)
        disks = []
        for slot, path in sorted(rec["slots"].items(), key=lambda x: int(x[0])):
            d = self.path(host, path)
            meta = read_json(d / "disk.json") if (d / "disk.json").exists() else {}
            disks.append({"slot": int(slot), "path": path, "parent": meta.get("parent"), "label": meta.get("label"),
                          "bytes": _size(d / "content")})
        out: dict[str, Any] = {"changed": False, "exists": True, "generation": rec.get("generation", 2),
                               "power": rec["power"], "disks": disks, "folders": {}, "user_files": [], "other": []}
        os_disk = rec["slots"].get("0")
        if not os_disk:
            return out
        root = self.path(host, os_disk) / "content"
        known: list[str] = []
        for kind, paths in folders.items():
            for p in paths:
                rel = "/".join(guest_rel(p))
                known.append(rel.lower())
                target = root / rel
                files, size = _count(target) if target.is_dir() else (0, 0)
                out["folders"][p] = {"kind": kind, "exists": target.is_dir(), "files": files, "bytes": size}
        roots = ["/".join(guest_rel(r)) for r in user_roots]
        for rel, size in _walk(root):
            low = rel.lower()
            profile = next((r for r in roots if low.startswith(r.lower() + "/")), None)
            if profile is not None:
                parts = rel[len(profile) + 1:].split("/")
                if len(parts) > 2 and parts[1].lower() in {u.lower() for u in user_folders}:
                    out["user_files"].append({"path": "C:\\" + rel.replace("/", "\\"), "bytes": size})
                    continue
            if not any(low == k or low.startswith(k + "/") for k in known):
                out["other"].append({"path": "C:\\" + rel.replace("/", "\\"), "bytes": size})
        return out


def _walk(root: Path) -> list[tuple[str, int]]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                found.append((os.path.relpath(full, root).replace(os.sep, "/"), os.path.getsize(full)))
    return sorted(found)


def _count(folder: Path) -> tuple[int, int]:
    entries = _walk(folder)
    return len(entries), sum(size for _, size in entries)


def _size(folder: Path) -> int:
    return _count(folder)[1] if folder.is_dir() else 0
