"""The lab's build-host actions: an Apps disk or an OS template built on a host, and removing a staged
image.

Mixed into ``LabProvider``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.files import atomic_write, read_json, write_json
from imaging.core.hashing import sha256_file, tree_manifest
from imaging.images import vhdx
from imaging.images.source_tree import find_name
from imaging.providers.lab.fs import copy_tree, guest_rel


class ImageActions:
    """The lab's build-host actions: an Apps disk or an OS template built on a host, and removing a staged"""

    # --- build hosts ---------------------------------------------------------------------------------
    def _image_dir(self, host: str, partial: Path, final: Path, **meta: Any) -> dict[str, Any]:
        """Seal a built lab image: the build host makes a real VHDX of the content (as New-VHD, Format-Volume
        and a copy do on Hyper-V), marks it read-only, and renames the folder into place."""
        image = partial / "image.vhdx"
        vhdx.build_volume_image(partial / "content", image, label=meta.get("label") or "OS", workdir=partial,
                                size_bytes=int(meta["size_gb"]) * 1024 ** 3 if meta.get("size_gb") else None)
        image.chmod(0o444)
        sha, size = sha256_file(image), image.stat().st_size
        write_json(partial / "disk.json", {"role": "template", "label": meta.get("label"), "parent": None,
                                           "read_only": True, "size_gb": meta.get("size_gb", 0),
                                           "attached_to": None, "sha256": sha, "name": final.name,
                                           "image_size": size, "image": image.name})
        os.replace(partial, final)
        return {"sha256": sha, "size": size}

    def _do_build_apps_disk(self, host: str, vhd_path: str, source_path: str, label: str, size_gb: int,
                            work_root: str, expect_version: str) -> dict:
        final = self.path(host, vhd_path)
        changed = False
        if not (final / "disk.json").exists():
            src = self.path(host, source_path)
            if not src.is_dir():
                raise ProviderError(f"source folder {source_path} not found", host=host, step="build_apps_disk")
            version = find_name(src, "version.txt")  # Windows: any case
            found = version.read_text(encoding="utf-8").strip() if version and version.is_file() else None
            if found != expect_version:
                raise ProviderError(f"{source_path}\\version.txt says {found!r}, the release expects "
                                    f"{expect_version!r}", host=host, step="build_apps_disk")
            partial = final.with_name(final.name + ".partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            copy_tree(src, partial / "content")
            self._image_dir(host, partial, final, label=label, size_gb=size_gb)
            changed = True
        meta = read_json(final / "disk.json")
        content = final / "content"
        files = [{"path": rel, "size": (content / rel).stat().st_size, "sha256": sha}
                 for rel, sha in sorted(tree_manifest(content).items())]
        dirs = sorted(p.relative_to(content).as_posix() for p in content.rglob("*") if p.is_dir())
        return {"changed": changed, "path": vhd_path, "label": label, "sha256": meta["sha256"],
                "size": meta["image_size"], "files": files, "directories": dirs}

    def _do_build_template(self, host: str, vm: str, version: str, iso_path: str, image_index: int, vhd_path: str,
                           work_root: str, size_gb: int, memory_mb: int, switch: str, unattend: str,
                           provision: str, timeout_s: int) -> dict:
        # In the lab the "installation image" is a folder holding the template's C: drive; the answer file
        # and provisioning script are placed where Windows Setup would find them.
        final = self.path(host, vhd_path)
        changed = False
        if not (final / "disk.json").exists():
            base = self.path(host, iso_path)
            if not base.is_dir():
                raise ProviderError(f"installation image {iso_path} not found", host=host, step="build_template")
            partial = final.with_name(final.name + ".partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            copy_tree(base, partial / "content")
            panther = partial / "content" / "Windows" / "Panther"
            scripts = partial / "content" / "Windows" / "Setup" / "Scripts"
            panther.mkdir(parents=True, exist_ok=True)
            scripts.mkdir(parents=True, exist_ok=True)
            (panther / "unattend.xml").write_text(unattend, encoding="utf-8")
            (scripts / "provision.ps1").write_text(provision, encoding="utf-8")
            self._image_dir(host, partial, final, size_gb=size_gb)
            changed = True
        meta = read_json(final / "disk.json")
        return {"changed": changed, "path": vhd_path, "version": version, "sha256": meta["sha256"],
                "size": meta["image_size"]}

    def _do_export_image(self, host: str, path: str, share_path: str, sha256: str) -> dict:
        """The build host copies a built image onto the image share, verified before and after the copy."""
        built = self.path(host, path) / "image.vhdx"
        if not built.is_file():
            raise ProviderError(f"{path} does not exist on this host", host=host, step="export_image")
        dest = self.path(host, share_path)
        if dest.is_file() and sha256_file(dest) == sha256:
            return {"changed": False, "path": share_path, "sha256": sha256, "size": dest.stat().st_size}
        if sha256_file(built) != sha256:
            raise ProviderError(f"{path} does not have the sha256 {sha256} the build reported", host=host,
                                step="export_image")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        shutil.copyfile(built, partial)
        if sha256_file(partial) != sha256:
            partial.unlink()
            raise ProviderError("the copy on the share is corrupt", host=host, step="export_image")
        os.replace(partial, dest)
        return {"changed": True, "path": share_path, "sha256": sha256, "size": dest.stat().st_size}

    def _do_remove_image(self, host: str, path: str, sha256: str) -> dict:
        d = self.path(host, path)
        if not (d / "disk.json").exists():
            return {"changed": False, "path": path}
        meta = read_json(d / "disk.json")
        if meta.get("sha256") != sha256:
            raise ProviderError(f"{path} holds sha256 {meta.get('sha256')}, not {sha256}; refusing to remove it",
                                host=host, step="remove_image")
        if meta.get("attached_to"):
            raise ProviderError(f"{path} is attached to {meta['attached_to']}; refusing to remove it", host=host,
                                step="remove_image")
        for other in (self.lab / "hosts" / host).rglob("disk.json"):
            if other.parent != d and read_json(other).get("parent") == path:
                raise ProviderError(f"{other.parent.name} is a child of {path}; refusing to remove it", host=host,
                                    step="remove_image")
        self._discard(d)
        return {"changed": True, "path": path}

    def _do_run_guest_command(self, host: str, vm: str, command: list[str], var_path: str, marker: str,
                              record: dict[str, Any]) -> dict:
        """Run a program in the guest, then record its completion on Var (the marker makes it run once).

        The lab guest has no Windows programs to run: it checks the program exists in the guest, where the
        release installed it, and logs the invocation on Var; on Hyper-V the same step runs it for real.
        """
        _, groot = self._running_guest(host, vm, "run_guest_command")
        var_dir, _ = self._disk(host, var_path, step="run_guest_command")
        done = var_dir.joinpath("content", *marker.split("/"))
        if done.exists():
            return {"changed": False}
        program = groot.joinpath(*guest_rel(command[0]))
        if not program.exists():
            raise ProviderError(f"{command[0]} is not installed in the guest", host=host, step="run_guest_command")
        log = var_dir / "content" / "imaging" / "guest-commands.log"
        previous = log.read_bytes() if log.exists() else b""
        atomic_write(log, previous + (json.dumps(command) + "\n").encode())
        write_json(done, record)
        return {"changed": True, "exit_code": 0}
