"""The lab's machines that imaging did not make: hand-made instrument PCs (one OS disk holding everything,
as facilities have them today), made on request for rehearsal, and the read-only survey of any VM.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.files import read_json, write_json
from imaging.core.hashing import sha256_file
from imaging.providers.lab.fs import guest_rel

# A hand-made instrument PC: Windows, the old control system (LabVIEW modules, its var folder), data,
# and what its users left on desktops. Relative to C:\, with file sizes (the lab writes that many bytes).
HANDMADE_FILES: dict[str, int] = {
    "Windows/System32/config/SYSTEM": 262144,
    "Windows/System32/drivers/etc/hosts": 824,
    "Program Files/Common Files/old-vendor/dll.bin": 40960,
    "pagefile.sys": 131072,
    "LabVIEW Modules/dae/dae.vi": 65536,
    "LabVIEW Modules/run/run_number.txt": 6,
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

    def _do_rename_vm(self, host: str, vm: str, new_name: str) -> dict:
        """Rename a VM (as Rename-VM does: its disks stay where they are). Done already: nothing to do."""
        old, new = self._vm_file(host, vm), self._vm_file(host, new_name)
        if not old.exists() and new.exists():
            return {"changed": False}
        if new.exists():
            raise ProviderError(f"cannot rename {vm} to {new_name}: a VM of that name exists", host=host,
                                step="rename_vm")
        rec = self._vm(host, vm, step="rename_vm")
        rec["name"] = new_name
        for path in rec["slots"].values():
            meta_file = self.path(host, path) / "disk.json"
            meta = read_json(meta_file)
            meta["attached_to"] = new_name
            write_json(meta_file, meta)
        write_json(new, rec)
        old.unlink()
        return {"changed": True}

    def _do_remove_vm(self, host: str, vm: str) -> dict:
        """Remove an empty VM (no disk attached, off): the undo of creating one. Its disks are never touched."""
        f = self._vm_file(host, vm)
        if not f.exists():
            return {"changed": False}
        rec = read_json(f)
        if rec["slots"] or rec["power"] != "Off":
            raise ProviderError(f"refusing to remove {vm}: it is {rec['power']} with {len(rec['slots'])} disk(s) "
                                "attached", host=host, step="remove_vm")
        f.unlink()
        return {"changed": True}

    def _do_copy_from_disk(self, host: str, source_path: str, dest_path: str, copies: list[dict[str, str]],
                           listing_rel: str) -> dict:
        """Copy folders and files from a disk (read only; its VM is off) into another (its VM off too), each file
        verified by sha256, then write the listing (its presence means done). Files already there with the same
        content are kept: a retry copies only what is missing. A copy's optional ``skip`` lists paths under its
        ``from`` that stay behind (imaging's own listings, when a volume is copied back), and its optional
        ``replaced_to`` is where a different file of the same name is moved first (kept, listed), not lost."""
        src = self._offline_disk(host, source_path, "copy_from_disk")
        dst = self._offline_disk(host, dest_path, "copy_from_disk")
        listing = dst / "content" / listing_rel
        if listing.exists():
            return {"changed": False, "files": len(read_json(listing)["files"])}
        done: list[dict[str, Any]] = []
        replaced: list[dict[str, str]] = []
        for c in copies:
            base = src / "content" / "/".join(guest_rel(c["from"]))
            items = [(base, "")] if base.is_file() else [(Path(dirpath) / n, os.path.relpath(
                Path(dirpath) / n, base).replace(os.sep, "/")) for dirpath, _d, names in os.walk(base) for n in names]
            skip = [k.replace("\\", "/").lower() for k in c.get("skip", [])]
            for path, rel in sorted(items):
                if path.is_symlink() or any(rel.lower() == k or rel.lower().startswith(k + "/") for k in skip):
                    continue
                target = dst / "content" / c["to"] / rel if rel else dst / "content" / c["to"]
                digest = sha256_file(path)
                written = not (target.is_file() and sha256_file(target) == digest)
                if written:
                    if target.is_file() and c.get("replaced_to"):  # a different file of the same name: kept
                        kept = dst / "content" / c["replaced_to"] / c["to"] / rel
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(target, kept)
                        replaced.append({"kept": kept.relative_to(dst / "content").as_posix(),
                                         "to": target.relative_to(dst / "content").as_posix()})
                    elif target.is_file():
                        target.unlink()  # never written through: the new file takes its name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                    if sha256_file(target) != digest:
                        raise ProviderError(f"the copy of {path} did not verify", host=host, step="copy_from_disk")
                done.append({"from": c["from"].rstrip("\\") + ("\\" + rel.replace("/", "\\") if rel else ""),
                             "to": f"{c['to']}/{rel}".strip("/"), "sha256": digest, "bytes": path.stat().st_size,
                             "written": written})
        write_json(listing, {"source": source_path, "files": done, "replaced": replaced})
        return {"changed": True, "files": len(done), "bytes": sum(f["bytes"] for f in done), "replaced": len(replaced)}

    def _do_undo_copy(self, host: str, dest_path: str, listing_rel: str) -> dict:
        """The undo of a copy into a disk that had files of its own (unadoption): the files it wrote go, the
        ones it replaced come back, then its listing. Files it found already identical stay. No listing: the
        copy never finished, and what it wrote carries no record; its partly written files are kept."""
        dst = self._offline_disk(host, dest_path, "undo_copy")
        root = dst / "content"
        listing = root / listing_rel
        if not listing.exists():
            return {"changed": False}
        done = read_json(listing)
        for f in done["files"]:
            if f.get("written") and (root / f["to"]).is_file():
                (root / f["to"]).unlink()
        for r in done.get("replaced", []):
            if (root / r["kept"]).is_file():
                os.replace(root / r["kept"], root / r["to"])
        listing.unlink()
        return {"changed": True}

    def _do_move_aside(self, host: str, path: str, folder: str, new_name: str) -> dict:
        """On an offline disk (its VM off): rename a folder (C:\\data -> C:\\data.before-imaging) so that a link to
        a shared volume can take its place; its undo renames it back. Done already: nothing to do."""
        d = self._offline_disk(host, path, "move_aside")
        src = (d / "content").joinpath(*guest_rel(folder))
        dst = src.with_name(new_name)
        if src.is_symlink() or not src.exists():
            return {"changed": False}  # moved already (a link to the shared volume may stand in its place)
        if dst.is_symlink():
            dst.unlink()  # a link the guest made to a volume: only a pointer, the folder comes back in its place
        elif dst.exists():
            raise ProviderError(f"cannot move {folder} aside: {new_name} exists beside it", host=host,
                                step="move_aside")
        os.replace(src, dst)
        return {"changed": True}

    def _do_remove_disk_links(self, host: str, path: str, links: list[str]) -> dict:
        """On an offline disk (its VM off): each path that is a link (a junction, a mount folder) goes, never what
        it leads to; an empty parent folder the links left goes too. A real folder or file is left alone."""
        d = self._offline_disk(host, path, "remove_disk_links")
        changed = False
        for link in links:
            p = (d / "content").joinpath(*guest_rel(link))
            if p.is_symlink():
                p.unlink()
                changed = True
                if p.parent != d / "content" and p.parent.is_dir() and not any(p.parent.iterdir()):
                    p.parent.rmdir()
        return {"changed": changed}

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
