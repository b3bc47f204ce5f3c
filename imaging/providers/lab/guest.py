"""The lab's guest actions: volumes mounted by label and linked, the health check, the record on Var,
commands run in the guest.

Mixed into ``LabProvider``."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from imaging.core.errors import ProviderError
from imaging.core.files import atomic_write, read_json, remove_dead_temporaries, write_json
from imaging.core.hashing import manifest_digest, sha256_file, tree_manifest
from imaging.images.source_tree import find_name
from imaging.model.record import problem as record_problem
from imaging.providers.lab.fs import guest_rel


def _apps_problems(apps: Path, expect: dict[str, Any]) -> list[str]:
    """The Apps volume against the image's manifest: count, bytes and a digest of (path, size); with a
    content digest, every file hashed too."""
    sizes: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(apps):
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(apps).as_posix().lower()
            sizes[rel] = str(full.stat().st_size)
            if "content_digest" in expect:
                hashes[rel] = sha256_file(full)
    total = sum(int(v) for v in sizes.values())
    if manifest_digest(sizes) != expect["sizes_digest"]:
        return [f"the Apps volume does not match its image: {len(sizes)} files, {total} bytes; the image has "
                f"{expect['files']} files, {expect['bytes']} bytes"]
    if "content_digest" in expect and manifest_digest(hashes) != expect["content_digest"]:
        return ["the Apps volume's content differs from its image (sizes match, a file's bytes do not)"]
    return []


class GuestActions:
    """The lab's guest actions: volumes mounted by label and linked, the health check, the record on Var,"""

    # --- the guest -----------------------------------------------------------------------------------
    def _running_guest(self, host: str, vm: str, step: str) -> tuple[dict[str, Any], Path]:
        rec = self._vm(host, vm, step=step)
        if rec["power"] != "Running":
            raise ProviderError(f"guest {vm} is not running", host=host, step=step)
        return rec, self.guest_root(host, vm)

    def _volume_by_label(self, host: str, rec: dict[str, Any], label: str, step: str) -> Path:
        for path in rec["slots"].values():
            meta = read_json(self.path(host, path) / "disk.json")
            if meta.get("label") == label:
                return self.path(host, path) / "content"
        raise ProviderError(f"no attached volume is labelled {label}", host=host, step=step)

    FIRST_BOOT = "C:\\ProgramData\\imaging\\first-boot.json"

    def _do_read_guest_files(self, host: str, vm: str, paths: list[str], max_bytes: int,
                             hash_over: int | None = None) -> dict:
        """Inside the running guest, read only: each path's file, or every file under its folder (through the
        guest's links, as a program there sees them). A path that does not exist is left out. A file larger
        than ``hash_over`` is answered by its sha256 only (under "hashed")."""
        _, groot = self._running_guest(host, vm, "read_guest_files")
        found: dict[str, dict[str, str]] = {}
        hashed: dict[str, dict[str, str]] = {}
        total = 0
        for winpath in paths:
            p = groot.joinpath(*guest_rel(winpath))
            if not p.exists():
                continue
            base = p.resolve()
            inside = {} if base.is_file() else tree_manifest(base)
            items = [("", base)] if base.is_file() else [(rel, base / rel) for rel, digest in inside.items()
                                                         if not digest.startswith("link:")]
            got: dict[str, str] = {}
            big: dict[str, str] = {}
            for rel, f in items:
                if hash_over and f.stat().st_size > hash_over:
                    big[rel] = sha256_file(f)
                    continue
                data = f.read_bytes()
                total += len(data)
                if total > max_bytes:
                    raise ProviderError(f"{winpath} holds more than {max_bytes} bytes; only small folders are read "
                                        "this way", host=host, step="read_guest_files")
                got[rel] = base64.b64encode(data).decode("ascii")
            found[winpath] = got
            hashed[winpath] = big
        return {"changed": False, "found": found, "hashed": hashed}

    ANSWER = "C:\\Windows\\Panther\\unattend.xml"
    # The lab's stand-ins for what Windows keeps in its registry (under the hives' folder, never rescued):
    IDENTITY = "C:\\Windows\\System32\\config\\lab-guest\\identity.json"  # what setup made of the answer
    SETUP_ERROR = "C:\\Windows\\System32\\config\\lab-guest\\setup.error"  # setup stopped: no answer

    def _do_inject_first_boot(self, host: str, path: str, volumes: list[dict[str, str]], answer: str) -> dict:
        """Write the answer file and the volume configuration into a new OS disk that no VM uses yet; its first
        boot applies both. The lab holds no secret: the account markers are filled with a lab account and no
        password, where a real host fills them from the credential source."""
        d, meta = self._disk(host, path, step="inject_first_boot")
        if meta.get("attached_to"):
            raise ProviderError(f"refusing to write into {path} offline: it is attached to {meta['attached_to']}",
                                host=host, step="inject_first_boot")
        root = d / "content"
        if not (root / "Windows").is_dir():
            raise ProviderError(f"{path} holds no Windows folder: not an OS disk", host=host, step="inject_first_boot")
        changed = False
        filled = answer.replace("@@GUEST_USER@@", LAB_GUEST_USER)
        for marker in ("@@GUEST_PASSWORD@@", "@@JOIN_USER@@", "@@JOIN_PASSWORD@@"):
            filled = filled.replace(marker, "")
        f = root.joinpath(*guest_rel(self.ANSWER))
        if answer and not (f.exists() and f.read_text(encoding="utf-8") == filled):
            atomic_write(f, filled.encode("utf-8"))
            changed = True
        f = root.joinpath(*guest_rel(self.FIRST_BOOT))
        body = {"volumes": volumes}
        if not (f.exists() and read_json(f) == body):
            write_json(f, body)
            changed = True
        return {"changed": changed}

    def _specialize(self, groot: Path) -> None:
        """Windows setup's specialize and oobeSystem passes: the answer file becomes the guest's identity,
        and SetupComplete deletes the file. A file setup cannot read stops it: the guest never answers."""
        f = groot.joinpath(*guest_rel(self.ANSWER))
        if not f.exists():
            return
        try:
            identity = answer_identity(f.read_text(encoding="utf-8"))
        except (ValueError, ElementTree.ParseError) as exc:
            atomic_write(groot.joinpath(*guest_rel(self.SETUP_ERROR)), f"the answer file: {exc}".encode())
            return
        write_json(groot.joinpath(*guest_rel(self.IDENTITY)), identity)
        f.unlink()

    def first_boot(self, host: str, vm: str) -> None:
        """What Windows does at the first boot of a new OS disk: setup applies the answer file, then
        SetupComplete applies the injected volume configuration once. A failure is left for the guest step
        to find and report, as on Windows."""
        groot = self.guest_root(host, vm)
        self._specialize(groot)
        f = groot.joinpath(*guest_rel(self.FIRST_BOOT))
        done = f.with_name("first-boot.done")
        if not f.exists() or done.exists():
            return
        try:
            self._do_configure_guest(host, vm, read_json(f)["volumes"])
        except ProviderError as exc:
            atomic_write(f.with_name("first-boot.error"), str(exc).encode())
            return
        atomic_write(done, b"applied\n")

    def setup_state(self, host: str, vm: str) -> tuple[str | None, dict[str, Any] | None]:
        """Why Windows setup stopped (None: it did not), and the identity it gave the guest (None: no answer
        file was ever applied, as on a machine imaging did not make)."""
        groot = self.guest_root(host, vm)
        err, ident = groot.joinpath(*guest_rel(self.SETUP_ERROR)), groot.joinpath(*guest_rel(self.IDENTITY))
        return (err.read_text() if err.exists() else None), (read_json(ident) if ident.exists() else None)

    def _do_remove_volume_links(self, host: str, vm: str, volumes: list[dict[str, str]]) -> dict:
        """The undo of configure_guest where the guest is not imaging's (a legacy side): each link that leads to
        its volume's mount folder goes, and the mount folder with it. Anything else is left alone."""
        _, groot = self._running_guest(host, vm, "remove_volume_links")
        changed = False
        for vol in volumes:
            mount = groot.joinpath(*guest_rel(vol["mount"]))
            link = groot.joinpath(*guest_rel(vol["link"]))
            if link.is_symlink() and os.readlink(link) == os.path.relpath(_link_target(mount, vol), link.parent):
                link.unlink()
                changed = True
            if mount.is_symlink():
                mount.unlink()
                changed = True
                if mount.parent.is_dir() and not any(mount.parent.iterdir()):
                    mount.parent.rmdir()
        return {"changed": changed}

    def _do_configure_guest(self, host: str, vm: str, volumes: list[dict[str, str]]) -> dict:
        rec, groot = self._running_guest(host, vm, "configure_guest")
        changed = False
        for vol in volumes:
            target = self._volume_by_label(host, rec, vol["label"], "configure_guest")
            mount = groot.joinpath(*guest_rel(vol["mount"]))
            mount.parent.mkdir(parents=True, exist_ok=True)
            want = os.path.relpath(target, mount.parent)
            if mount.is_symlink() and os.readlink(mount) == want:
                pass
            else:
                if mount.is_symlink():
                    mount.unlink()
                elif mount.exists():
                    if any(mount.iterdir()):
                        raise ProviderError(f"{vol['mount']} exists and is not empty; refusing to mount over it",
                                            host=host, step="configure_guest")
                    mount.rmdir()
                os.symlink(want, mount)
                changed = True
            link = groot.joinpath(*guest_rel(vol["link"]))
            link.parent.mkdir(parents=True, exist_ok=True)
            to = _link_target(mount, vol)
            if not to.is_dir():
                to.mkdir(parents=True)  # a folder on the volume a link leads into (a shared folder's place)
                changed = True
            want_link = os.path.relpath(to, link.parent)
            if link.is_symlink():
                if os.readlink(link) == want_link:
                    continue
                link.unlink()
            elif link.exists():
                if link.is_dir() and not any(link.iterdir()):
                    link.rmdir()  # an empty placeholder folder is replaced by the junction
                else:
                    raise ProviderError(f"{vol['link']} is a folder with content; refusing to replace it by a "
                                        "link (move its content to the volume first)", host=host,
                                        step="configure_guest")
            os.symlink(want_link, link)
            changed = True
        return {"changed": changed}

    def _do_health_check(self, host: str, vm: str, expect_apps_version: str, links: list[dict[str, str]],
                         expect_settings_sha256: str, expect_apps: dict[str, Any] | None = None) -> dict:
        rec, groot = self._running_guest(host, vm, "health_check")
        problems = []
        resolved = {}
        for item in links:
            p = groot.joinpath(*guest_rel(item["link"]))
            target = self._volume_by_label(host, rec, item["label"], "health_check")
            ok = p.exists() and p.resolve() == target.resolve()
            resolved[item["link"]] = item["label"] if ok else None
            if not ok:
                problems.append(f"{item['link']} does not lead to the {item['label']} volume")
        apps = groot.joinpath(*guest_rel("C:\\Instrument\\Apps"))
        version_file = find_name(apps, "version.txt") or apps / "version.txt"  # Windows: any case
        version = version_file.read_text().strip() if version_file.exists() else None
        if version != expect_apps_version:
            problems.append(f"Apps version is {version!r}, expected {expect_apps_version!r}")
        if expect_apps:
            problems += _apps_problems(apps.resolve(), expect_apps)
        prov_file = groot.joinpath(*guest_rel("C:\\Instrument\\Settings\\.imaging\\manifest.json"))
        digest = read_json(prov_file).get("digest") if prov_file.exists() else None
        if digest != expect_settings_sha256:
            problems.append(f"Settings digest is {digest!r}, expected {expect_settings_sha256!r}")
        if problems:
            raise ProviderError("health check failed: " + "; ".join(problems), host=host, step="health_check")
        return {"changed": False, "apps_version": version, "links": resolved, "settings": {"digest": digest}}

    RECORD = "C:\\Instrument\\Var\\imaging\\record.json"
    PREVIOUS = "C:\\Instrument\\Var\\imaging\\record.previous.json"

    def _do_write_record(self, host: str, vm: str, record: dict[str, Any], operation: str) -> dict:
        """Write the record, keeping the one it replaces for the undo, marked with ``operation`` (so that an
        undo restores only what this operation replaced, never a copy an earlier operation left)."""
        _, groot = self._running_guest(host, vm, "write_record")
        f = groot.joinpath(*guest_rel(self.RECORD))
        folder = f.parent.resolve()
        old_text: str | None = None
        if f.exists():
            try:
                old = read_json(f)
            except (ValueError, UnicodeDecodeError):
                old = None
            if old == record:
                return {"changed": False}
            if old is None or record_problem(old):  # damaged: kept aside, never the undo's content
                os.replace(folder / f.name, folder / "record.damaged.json")
            else:
                old_text = f.read_text(encoding="utf-8")
        kept = folder / "record.previous.json"
        if (read_json(kept) if kept.exists() else {}).get("operation") != operation:  # a retry keeps the first
            write_json(kept, {"operation": operation, "previous": old_text})
        write_json(folder / f.name, record)
        return {"changed": True}

    def _do_restore_record(self, host: str, vm: str, operation: str) -> dict:
        """Put back the record ``operation`` replaced (none: remove it). A kept copy of another operation
        means this one never replaced the record: nothing to do."""
        _, groot = self._running_guest(host, vm, "restore_record")
        f = groot.joinpath(*guest_rel(self.RECORD))
        previous = groot.joinpath(*guest_rel(self.PREVIOUS))
        if f.parent.exists():
            remove_dead_temporaries(f.parent.resolve())  # a write_record killed midway left its temporary
        try:
            kept = read_json(previous) if previous.exists() else None
        except (ValueError, UnicodeDecodeError):
            kept = None
        if not isinstance(kept, dict) or kept.get("operation") != operation:
            return {"changed": False}
        folder = f.parent.resolve()
        if kept.get("previous") is None:
            (folder / f.name).unlink(missing_ok=True)
        else:
            atomic_write(folder / f.name, kept["previous"].encode("utf-8"))
        (folder / previous.name).unlink()
        return {"changed": True}


def _link_target(mount: Path, vol: dict[str, str]) -> Path:
    """Where a volume's link leads: its mount folder, or a folder inside it (``sub``, a relative Windows path)."""
    return mount.joinpath(*vol["sub"].split("\\")) if vol.get("sub") else mount


LAB_GUEST_USER = "LabAdmin"
_NS = "{urn:schemas-microsoft-com:unattend}"


def answer_identity(text: str) -> dict[str, Any]:
    """What Windows setup takes from an instrument's answer file: computer name, time zone, locale, domain."""
    root = ElementTree.fromstring(text)

    def first(tag: str) -> str | None:
        node = root.find(f".//{_NS}{tag}")
        return node.text if node is not None else None

    name = first("ComputerName")
    if not name:
        raise ValueError("it names no computer")
    return {"computer_name": name, "time_zone": first("TimeZone"), "locale": first("SystemLocale"),
            "domain": first("JoinDomain"), "administrator": first("Name")}
