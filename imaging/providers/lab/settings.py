"""The lab's settings-only change of a running guest (`invoke apply-settings`) and its restore.

As on Hyper-V (templates/powershell/apply_settings.ps1.j2), the change happens inside the running guest
through its Settings link: the new files are staged in the guest and verified by sha256 first, what they
replace is kept on Var with a listing, then they are put in place by rename with the volume's manifest, the
whole volume is checked against that manifest, and the change is entered in the settings ledger on Var.

Mixed into ``LabProvider``.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.files import atomic_write, read_json, write_json
from imaging.core.hashing import sha256_bytes, sha256_file, tree_manifest

MANIFEST = ".imaging/manifest.json"
STAGED = "C:\\ProgramData\\imaging\\settings-staged"  # in the guest: <operation>\ while a change is staged


def _remove_file(root: Path, rel: str) -> None:
    """Remove a file and the folders it leaves empty (never ``root`` itself)."""
    target = root.joinpath(*rel.split("/"))
    target.unlink(missing_ok=True)
    parent = target.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


class SettingsActions:
    """apply_settings and restore_settings on the running lab guest."""

    def _settings_places(self, host: str, vm: str, settings_link: str, var_link: str, backup_rel: str,
                         ledger_rel: str, step: str) -> tuple[Path, Path, Path, Path]:
        self._running_guest(host, vm, step)
        settings = self._guest_dir(host, vm, settings_link, step)
        var = self._guest_dir(host, vm, var_link, step)
        return settings, var, var.joinpath(*backup_rel.split("/")), var.joinpath(*ledger_rel.split("/"))

    def _do_apply_settings(self, host: str, vm: str, settings_link: str, var_link: str, backup_rel: str,
                           ledger_rel: str, operation: str, files: dict[str, str], remove: list[str],
                           manifest: dict[str, Any], expect_before: str, entry: dict[str, Any]) -> dict:
        step = "apply_settings"
        settings, _, backup, ledger = self._settings_places(host, vm, settings_link, var_link, backup_rel,
                                                            ledger_rel, step)
        man_file = settings.joinpath(*MANIFEST.split("/"))
        digest = read_json(man_file).get("digest") if man_file.is_file() else None
        doc = read_json(ledger) if ledger.is_file() else {"applied": []}
        recorded = any(e.get("operation") == operation for e in doc["applied"])
        if digest == manifest["digest"] and recorded:
            return {"changed": False, "files": len(files)}
        listing = backup / "listing.json"
        if not listing.exists() and digest != expect_before:  # the first attempt: nothing was changed yet
            raise ProviderError(f"the Settings volume of {vm} is not what the plan was made from (its digest is "
                                f"{digest}, expected {expect_before}): someone changed it since; nothing was "
                                "changed, plan again", host=host, step=step)
        staged = self.guest_path(host, vm, STAGED) / operation
        for rel, b64 in files.items():
            data = base64.b64decode(b64)
            if sha256_bytes(data) != manifest["files"].get(rel):
                raise ProviderError(f"{rel} does not match its sha256 in the new manifest; nothing was put in place",
                                    host=host, step=step)
            atomic_write(staged.joinpath(*rel.split("/")), data)
        if not listing.exists():  # back up once: a re-run after a failure must not back up the new files
            saved = []
            for rel in sorted([*files, *remove, MANIFEST]):
                src = settings.joinpath(*rel.split("/"))
                if src.is_symlink() or (src.exists() and not src.is_file()):
                    raise ProviderError(f"Settings\\{rel} is not a regular file; refusing to replace it", host=host,
                                        step=step)
                if src.is_file():
                    atomic_write(backup.joinpath("files", *rel.split("/")), src.read_bytes())
                saved.append({"path": rel, "previous_sha256": sha256_file(src) if src.is_file() else None})
            write_json(listing, {"operation": operation, "files": saved})
        for rel in files:
            atomic_write(settings.joinpath(*rel.split("/")), staged.joinpath(*rel.split("/")).read_bytes())
        for rel in remove:
            _remove_file(settings, rel)
        write_json(man_file, manifest)
        have = {rel: d for rel, d in tree_manifest(settings).items() if rel != MANIFEST}
        if have != manifest["files"]:
            wrong = sorted(set(have.items()) ^ set(manifest["files"].items()))
            raise ProviderError("after writing, the Settings volume does not match its new manifest: "
                                + ", ".join(sorted({rel for rel, _ in wrong})[:8]), host=host, step=step)
        if not recorded:
            doc["applied"].append({**entry, "backup": backup_rel})
            write_json(ledger, doc)
        shutil.rmtree(staged, ignore_errors=True)
        return {"changed": True, "files": len(files), "removed": len(remove)}

    def _do_restore_settings(self, host: str, vm: str, settings_link: str, var_link: str, backup_rel: str,
                             ledger_rel: str, operation: str) -> dict:
        """Put back exactly what ``operation`` replaced (hash-checked) and remove what it added."""
        step = "restore_settings"
        settings, _, backup, ledger = self._settings_places(host, vm, settings_link, var_link, backup_rel,
                                                            ledger_rel, step)
        listing = backup / "listing.json"
        doc = read_json(ledger) if ledger.is_file() else {"applied": []}
        recorded = [e for e in doc["applied"] if e.get("operation") == operation]
        if not listing.exists():
            if recorded:
                raise ProviderError(f"the backup of {operation} ({backup_rel}) is missing on Var; cannot restore",
                                    host=host, step=step)
            return {"changed": False}
        restored = []
        for f in read_json(listing)["files"]:
            if f["previous_sha256"] is None:
                _remove_file(settings, f["path"])
            else:
                saved = backup.joinpath("files", *f["path"].split("/"))
                if sha256_file(saved) != f["previous_sha256"]:
                    raise ProviderError(f"the backup of {f['path']} does not match its recorded sha256", host=host,
                                        step=step)
                atomic_write(settings.joinpath(*f["path"].split("/")), saved.read_bytes())
            restored.append(f["path"])
        if recorded:
            doc["applied"] = [e for e in doc["applied"] if e.get("operation") != operation]
            write_json(ledger, doc)
        shutil.rmtree(backup)
        shutil.rmtree(self.guest_path(host, vm, STAGED) / operation, ignore_errors=True)
        return {"changed": True, "files": restored}
