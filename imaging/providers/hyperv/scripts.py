"""Render step scripts for the ``hyperv`` provider from ``templates/powershell/``.

Every value enters a script through the one filter ``ps`` (``quoting.ps_literal``), and a template that
prints anything without it is refused when it is loaded, so a raw value can never be concatenated into
PowerShell. The markers that frame a script's JSON result are defined once, in
``imaging.core.pstemplates``; the transport reads results with the same constants.

Refresh the reviewed golden files after a deliberate template change with::

    python -m imaging.providers.hyperv.scripts --refresh-golden tests/golden/powershell
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import manifest_digest, sha256_bytes
from imaging.core.pstemplates import make_environment
from imaging.core.quoting import (
    check_label,
    check_name,
    check_relpath,
    check_sha256,
    check_windows_name,
    check_windows_path,
)
from imaging.model.inventory import ROLES
from imaging.model.steps import ACTIONS

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "templates" / "powershell"

# Actions whose script runs inside the guest over PowerShell Direct; they take the guest credential as
# script parameters ($GuestUser, $GuestPassword), never as rendered text.
GUEST_ACTIONS = frozenset({"wait_guest", "configure_guest", "health_check", "write_record", "restore_record",
                           "survey_vm", "remove_volume_links", "read_guest_files",
                           "inject_first_boot",  # fills the guest's account into its answer file
                           "run_guest_command",
                           "apply_hotfix", "revert_hotfix", "stop_services", "start_services",
                           "apply_settings", "restore_settings"})



_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = make_environment(TEMPLATE_DIR)
    return _ENV


# --- input validation: refuse values that would make a wrong path or name, before any script exists ---

_PATH_KEYS = ("lock_path", "share_path", "dest_path", "path", "parent_path", "os_path", "template_path",
              "var_path", "package_path", "ledger", "apps_link", "vhd_path", "source_path", "work_root",
              "iso_path", "settings_link", "var_link")


def _check_inputs(action: str, inputs: Mapping[str, Any]) -> None:
    where = f"step {action}"
    for key in ACTIONS[action]:
        if key not in inputs:
            raise InputError("missing step input", file=where, field=key,
                             fix="build the step with every input the catalogue in imaging/steps.py lists")
    for key in _PATH_KEYS:
        if key in inputs:
            check_windows_path(inputs[key], field=key, file=where)
    for key in ("vm", "name", "new_name"):
        if key in inputs and action != "move_aside":
            check_name(inputs[key], field=key, file=where)
    if "label" in inputs:
        check_label(inputs["label"], field="label", file=where)
    if "sha256" in inputs:
        check_sha256(inputs["sha256"], field="sha256", file=where)
    if "role" in inputs and inputs["role"] not in ROLES:
        raise InputError("unknown disk role", file=where, field="role", value=inputs["role"],
                         fix=f"use one of {', '.join(ROLES)}")
    if "slot" in inputs and (type(inputs["slot"]) is not int or not 0 <= inputs["slot"] <= 63):
        raise InputError("not a SCSI slot", file=where, field="slot", value=inputs["slot"],
                         fix="use an integer 0-63 (os=0, apps=1, settings=2, var=3, data=4, shared=5)")
    for key in ("timeout_s", "keep", "size_gb", "need_bytes", "memory_mb", "cpus", "generation", "image_index",
                "max_concurrent", "hash_over"):
        if key in inputs and (type(inputs[key]) is not int or inputs[key] < 1):
            raise InputError("must be a positive integer", file=where, field=key, value=inputs[key],
                             fix="give a whole number greater than zero")
    if action == "preflight":
        for i, art in enumerate(inputs["artifacts"]):
            check_name(art.get("name"), field=f"artifacts[{i}].name", file=where)
            check_sha256(art.get("sha256"), field=f"artifacts[{i}].sha256", file=where)
            check_windows_path(art.get("path"), field=f"artifacts[{i}].path", file=where)
    if action == "rescue_user_files":
        check_relpath(inputs["dest_rel"], field="dest_rel", file=where)
        for i, p in enumerate(inputs["exclude"]):
            check_windows_path(p, field=f"exclude[{i}]", file=where)
    if action in ("write_settings", "apply_settings"):
        if not isinstance(inputs["files"], Mapping):
            raise InputError("files must map relative paths to base64 content", file=where, field="files",
                             fix="pass {relpath: base64 of the bytes}")
        for rel, b64 in inputs["files"].items():
            check_relpath(rel, field=f"files[{rel!r}]", file=where)
            try:
                base64.b64decode(b64, validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise InputError("file content must be base64 of the file's bytes", file=where,
                                 field=f"files[{rel!r}]",
                                 fix="base64-encode the rendered bytes before planning") from None
    if action in ("apply_settings", "restore_settings"):
        check_relpath(inputs["backup_rel"], field="backup_rel", file=where)
        check_relpath(inputs["ledger_rel"], field="ledger_rel", file=where)
        check_name(inputs["operation"], field="operation", file=where)
    if action == "apply_settings":
        for i, rel in enumerate(inputs["remove"]):
            check_relpath(rel, field=f"remove[{i}]", file=where)
        man = inputs["manifest"]
        if not isinstance(man, Mapping) or not isinstance(man.get("files"), Mapping):
            raise InputError("manifest must hold files (relpath -> sha256) and digest", file=where, field="manifest",
                             fix="pass the new volume's manifest")
        check_sha256(man.get("digest"), field="manifest.digest", file=where)
        for rel, sha in man["files"].items():
            check_relpath(rel, field=f"manifest.files[{rel!r}]", file=where)
            check_sha256(sha, field=f"manifest.files[{rel!r}]", file=where)
        check_sha256(inputs["expect_before"], field="expect_before", file=where)
        if not isinstance(inputs["entry"], Mapping):
            raise InputError("entry must be a mapping", file=where, field="entry", fix="pass a dict")
    if action == "write_volume_files":
        if not isinstance(inputs["files"], Mapping):
            raise InputError("files must map relative paths to text", file=where, field="files",
                             fix="pass {relpath: text}")
        for rel in inputs["files"]:
            check_relpath(rel, field=f"files[{rel!r}]", file=where)
    if "switch" in inputs:
        check_windows_name(inputs["switch"], field="switch", file=where)
    if action == "read_host_files":
        for i, p in enumerate(inputs["paths"]):
            check_windows_path(p, field=f"paths[{i}]", file=where)
    if action == "set_host_note" and inputs["note"] is not None and not isinstance(inputs["note"], Mapping):
        raise InputError("a note is a mapping (or null to remove it)", file=where, field="note",
                         fix="pass a dict")
    if action == "doctor_host":
        check_windows_path(inputs["storage_root"], field="storage_root", file=where)
        check_windows_path(inputs["share"], field="share", file=where)
        for i, vm in enumerate(inputs["vms"]):
            check_name(vm, field=f"vms[{i}]", file=where)
    if action == "read_guest_files":
        for i, p in enumerate(inputs["paths"]):
            check_windows_path(p, field=f"paths[{i}]", file=where)
    for i, rel in enumerate(inputs.get("only", []) if action == "read_volume" else []):
        check_relpath(rel, field=f"only[{i}]", file=where)
    if action in ("copy_from_disk", "undo_copy"):
        check_relpath(inputs["listing_rel"], field="listing_rel", file=where)
    if action == "copy_from_disk":
        for i, c in enumerate(inputs["copies"]):
            check_windows_path(c.get("from"), field=f"copies[{i}].from", file=where)
            if c.get("to"):
                check_relpath(c["to"], field=f"copies[{i}].to", file=where)
            if c.get("replaced_to"):
                check_relpath(c["replaced_to"], field=f"copies[{i}].replaced_to", file=where)
            for j, k in enumerate(c.get("skip", [])):
                check_relpath(k, field=f"copies[{i}].skip[{j}]", file=where)
    if action == "survey_vm":
        for kind, paths in inputs["folders"].items():
            check_name(kind, field="folders", file=where)
            for i, p in enumerate(paths):
                check_windows_path(p, field=f"folders.{kind}[{i}]", file=where)
        for i, p in enumerate(inputs["user_roots"]):
            check_windows_path(p, field=f"user_roots[{i}]", file=where)
        for i, name in enumerate(inputs["user_folders"]):
            check_windows_name(name, field=f"user_folders[{i}]", file=where)
    if action == "remove_disk_links":
        for i, p in enumerate(inputs["links"]):
            check_windows_path(p, field=f"links[{i}]", file=where)
        if not all(p.upper().startswith("C:\\") for p in inputs["links"]):
            raise InputError("links are paths on the old machine's C: drive", file=where, field="links",
                             value=inputs["links"], fix="give C:\\ paths")
    if action == "move_aside":
        check_windows_path(inputs["folder"], field="folder", file=where)
        check_windows_name(inputs["new_name"], field="new_name", file=where)
    if action == "inject_first_boot" and (not isinstance(inputs["answer"], str)
                                          or not inputs["answer"].lstrip().startswith("<?xml")):
            raise InputError("the answer file must be XML text", file=where, field="answer",
                             fix="render it with images.answer_files.render_instrument_answer")
    if "computer_name" in inputs:
        check_name(inputs["computer_name"], field="computer_name", file=where)
    if action in ("configure_guest", "inject_first_boot", "remove_volume_links"):
        for i, vol in enumerate(inputs["volumes"]):
            check_label(vol.get("label"), field=f"volumes[{i}].label", file=where)
            check_windows_path(vol.get("mount"), field=f"volumes[{i}].mount", file=where)
            check_windows_path(vol.get("link"), field=f"volumes[{i}].link", file=where)
            if vol.get("sub"):
                check_relpath(vol["sub"], field=f"volumes[{i}].sub", file=where)
    if action == "health_check":
        for i, link in enumerate(inputs["links"]):
            check_windows_path(link.get("link"), field=f"links[{i}].link", file=where)
            check_label(link.get("label"), field=f"links[{i}].label", file=where)
        if inputs["expect_settings_sha256"] is not None:
            check_sha256(inputs["expect_settings_sha256"], field="expect_settings_sha256", file=where)
    # Optional inputs with defaults in the templates.
    if "record_path" in inputs:
        check_windows_path(inputs["record_path"], field="record_path", file=where)
    if "apps_version_file" in inputs:
        check_relpath(inputs["apps_version_file"], field="apps_version_file", file=where)
    for key in ("settings_manifest", "manifest_name"):
        if key in inputs:
            check_relpath(inputs[key], field=key, file=where)
    if action in ("apply_hotfix", "revert_hotfix"):
        check_name(inputs["hotfix_id"], field="hotfix_id", file=where)
        check_name(inputs["apps_generation"], field="apps_generation", file=where)
        check_relpath(inputs["backup_rel"], field="backup_rel", file=where)
    if action == "apply_hotfix":
        if not isinstance(inputs["entry"], Mapping):
            raise InputError("entry must be a mapping", file=where, field="entry", fix="pass a dict")
        if not inputs["files"]:
            raise InputError("a hotfix needs at least one file", file=where, field="files",
                             fix="list the files of the hotfix")
        for i, f in enumerate(inputs["files"]):
            check_relpath(f.get("path"), field=f"files[{i}].path", file=where)
            check_sha256(f.get("sha256"), field=f"files[{i}].sha256", file=where)
        for i, sc in enumerate(inputs["scripts"]):
            if sc.get("phase") not in ("pre", "post"):
                raise InputError("a script phase is pre or post", file=where, field=f"scripts[{i}].phase",
                                 value=sc.get("phase"), fix="use pre or post")
            check_relpath(sc.get("path"), field=f"scripts[{i}].path", file=where)
    if action in ("stop_services", "start_services"):
        for i, name in enumerate(inputs["services"]):
            check_name(name, field=f"services[{i}]", file=where)
    if action == "build_template":
        from imaging.images.build import check_template_version

        check_template_version(inputs["version"], field="version", file=where)
    for key in ("expect_version", "unattend", "provision", "switch"):
        if key in inputs and (not isinstance(inputs[key], str) or not inputs[key]):
            raise InputError("must be non-empty text", file=where, field=key, value=inputs[key],
                             fix="render or give the text before planning")
    if action == "write_record" and not isinstance(inputs["record"], Mapping):
        raise InputError("record must be a mapping", file=where, field="record", fix="pass a dict")


def render_script(action: str, inputs: Mapping[str, Any], *, env: jinja2.Environment | None = None) -> str:
    """The PowerShell text for one step. Raises InputError on bad inputs, before anything runs."""
    if action not in ACTIONS:
        raise InputError("unknown step action", field="action", value=action,
                         fix=f"use one of {', '.join(ACTIONS)}")
    _check_inputs(action, inputs)
    extra: dict[str, Any] = {}
    if action == "write_settings":
        extra["manifest_text"], extra["manifest_digest"] = settings_manifest(inputs["files"])
    if action in ("apply_settings", "restore_settings"):  # handed to the guest whole, as JSON text
        request = {k: v for k, v in inputs.items() if k != "vm"}
        if action == "apply_settings":
            request["manifest_text"] = json.dumps(inputs["manifest"], indent=2, sort_keys=True) + "\n"
        extra["request_json"] = json.dumps(request, sort_keys=True, ensure_ascii=False)
    template = (env or _env()).get_template(f"{action}.ps1.j2")
    return template.render(inputs=dict(inputs), action=action, guest=action in GUEST_ACTIONS, **extra)


def settings_manifest(files: Mapping[str, str]) -> tuple[str, str]:
    """The Settings manifest text and its digest: each file's sha256 (of its bytes, given as base64) and one
    digest over the sorted (path, sha256) pairs, the same digest the plan expects in
    ``expect_settings_sha256``."""
    hashes = {rel: sha256_bytes(base64.b64decode(b64)) for rel, b64 in files.items()}
    digest = manifest_digest(hashes)
    return json.dumps({"files": hashes, "digest": digest}, indent=2, sort_keys=True) + "\n", digest


# --- golden files ---------------------------------------------------------------------------------

GOLDEN_INPUTS = "_inputs.json"


def refresh_golden(folder: Path) -> list[Path]:
    """Re-render every action in ``folder/_inputs.json`` into ``folder/<action>.ps1`` (reviewed by diff)."""
    samples = json.loads((folder / GOLDEN_INPUTS).read_text(encoding="utf-8"))
    missing = sorted(set(ACTIONS) - set(samples))
    if missing:
        raise InputError("golden sample inputs lack actions", file=str(folder / GOLDEN_INPUTS),
                         field=", ".join(missing), fix="add sample inputs for every action in ACTIONS")
    written = []
    for action in ACTIONS:
        target = folder / f"{action}.ps1"
        target.write_text(render_script(action, samples[action]), encoding="utf-8", newline="\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imaging.providers.hyperv.scripts",
                                     description="Render hyperv step scripts.")
    parser.add_argument("--refresh-golden", metavar="FOLDER", type=Path,
                        help="re-render the golden scripts in FOLDER from FOLDER/_inputs.json")
    parser.add_argument("--render", metavar="ACTION", help="print one action's script")
    parser.add_argument("--inputs", metavar="JSON", help="inputs for --render, as a JSON object")
    args = parser.parse_args(argv)
    try:
        if args.refresh_golden:
            for path in refresh_golden(args.refresh_golden):
                print(path)
            return 0
        if args.render:
            sys.stdout.write(render_script(args.render, json.loads(args.inputs or "{}")))
            return 0
    except (ImagingError, jinja2.TemplateError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
