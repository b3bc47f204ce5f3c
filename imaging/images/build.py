"""Building release images: the Apps disk of a release, empty instrument disks, and OS templates.

Linux builds run here through :mod:`imaging.images.vhdx` (no root, no mounting). A ``provider: hyperv`` build host
gets a step (``build_apps_disk``, ``build_template``) rendered from templates/powershell like every other
step. Every build leaves a build record (:mod:`imaging.state.builds`); an image enters the artifact store only
after the build succeeded, so a failed or unfinished build never looks like a release.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import ArtifactError, InputError
from imaging.core.hashing import sha256_and_size, sha256_file
from imaging.core.quoting import check_name, check_windows_path
from imaging.images import vhdx
from imaging.images.manifest import FileEntry, ImageManifest
from imaging.images.source_tree import find_name, hash_tree, scan_tree
from imaging.model.inventory import Host
from imaging.model.releases import ReleaseDefinition
from imaging.model.steps import Step
from imaging.state.builds import BuildRecord, BuildRecords
from imaging.state.store import ArtifactStore

APPS_LABEL = "Apps"
VERSION_FILE = "version.txt"
EMPTY_DISKS = {"settings": "Settings", "var": "Var", "data": "Data"}

_TEMPLATE_VERSION_RE = re.compile(r"^([a-z][a-z0-9]*(?:-[a-z0-9]+)*)-(2[0-9]{3})\.([1-9][0-9]{0,2})$")
_TEMPLATE_FORM = "<os>-<edition>-<year>.<n>, e.g. win11-ltsc-2026.1 (lower case, year 2000-2999, n 1-999)"


def check_template_version(name: object, *, field: str = "version", file: str | None = None) -> str:
    """The one rule for OS template versions: ``win11-ltsc-2026.1``. Refuses, never repairs."""
    if not isinstance(name, str) or not _TEMPLATE_VERSION_RE.fullmatch(name) or len(name) > 64:
        raise InputError("not an OS template version", file=file, field=field, value=name,
                         fix=f"write it as {_TEMPLATE_FORM}")
    return check_name(name, field=field, file=file)


@dataclass(frozen=True)
class BuildResult:
    record: BuildRecord
    manifest: ImageManifest | None


def _release(releases: dict[str, ReleaseDefinition], release: str) -> ReleaseDefinition:
    if release not in releases:
        raise InputError("no such release", field="--release", value=release,
                         fix=f"add releases/{release}.yaml first (known: {', '.join(sorted(releases))})")
    return releases[release]


def check_apps_source(source: Path, rel: ReleaseDefinition) -> Path:
    """The tree must exist and carry the version file the health check reads, matching the release."""
    source = Path(source)
    if not source.is_dir():
        raise InputError("source folder not found", field="--source", value=str(source),
                         fix="give the folder holding server, client, python and version.txt")
    version = find_name(source, VERSION_FILE) or source / VERSION_FILE
    if not version.is_file():
        raise InputError(f"the tree has no {VERSION_FILE}", file=str(version), field="--source",
                         fix=f"write the release's apps version ({rel.apps.version}) into {VERSION_FILE}")
    found = version.read_text(encoding="utf-8", errors="replace").strip()
    if found != rel.apps.version:
        raise InputError("version file does not match the release", file=str(version), field="apps.version",
                         value=found, fix=f"the release {rel.id} expects {rel.apps.version!r}")
    return source


def _refuse_existing(store: ArtifactStore, name: str) -> None:
    """Release images are immutable: an artifact already in the store with its blob is never rebuilt."""
    if store.exists(name):
        try:
            store.path_of(name)
        except ArtifactError:
            return  # manifest kept, blob pruned or lost: a rebuild is how it comes back
        raise ArtifactError(f"{name} is already built and stored ({store.get(name).sha256}); images are "
                            f"immutable: publish a patch release instead")


def build_apps(*, store: ArtifactStore, records: BuildRecords, releases: dict[str, ReleaseDefinition],
               release: str, source: Path, workdir: Path, size_bytes: int | None = None) -> BuildResult:
    """Build the Apps VHDX of ``release`` from ``source`` and put it in the store with its manifest."""
    rel = _release(releases, release)
    source = check_apps_source(source, rel)
    name = rel.apps.name
    _refuse_existing(store, name)
    rec = records.start(kind="apps", name=name, release=release,
                        inputs={"source": str(source.resolve()), "label": APPS_LABEL, "size_bytes": size_bytes,
                                "builder": "linux"})
    rec, manifest = _build_and_store(store=store, records=records, rec=rec, tree=source, label=APPS_LABEL,
                                     kind="apps", source=f"build-apps {release} from {source}", workdir=workdir,
                                     size_bytes=size_bytes)
    return BuildResult(rec, manifest)


def _build_and_store(*, store: ArtifactStore, records: BuildRecords, rec: BuildRecord, tree: Path, label: str,
                     kind: str, source: str, workdir: Path, size_bytes: int | None = None
                     ) -> tuple[BuildRecord, ImageManifest]:
    """Build ``tree`` into a VHDX and move it into the store; the record ends ok with the manifest, or failed
    with the reason (nothing half-made stays: the scratch folder goes, the store takes whole files only)."""
    try:
        with tempfile.TemporaryDirectory(prefix=f"build-{kind}-", dir=_ensure(workdir)) as tmp:
            out = Path(tmp) / f"{rec.name}.vhdx"
            manifest = vhdx.build_volume_image(tree, out, label=label, size_bytes=size_bytes, workdir=Path(tmp))
            stored = store.add(out, name=rec.name, kind=kind, source=source, suffix=".vhdx", move=True)
            if stored.sha256 != manifest.image_sha256:
                raise ArtifactError(f"the store holds {stored.sha256} for {rec.name}, the build made "
                                    f"{manifest.image_sha256}")
    except BaseException as exc:
        records.fail(rec, str(exc) or type(exc).__name__)
        raise
    return records.finish(rec, sha256=manifest.image_sha256, size=manifest.image_size, tools=manifest.tools,
                          manifest=manifest.to_dict()), manifest


def _ensure(folder: Path) -> Path:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def manifest_of(records: BuildRecords, kind: str, name: str) -> ImageManifest:
    rec = records.get(kind, name)
    if rec is None or rec.manifest is None:
        raise ArtifactError(f"no successful build record with a manifest for {kind} {name}; build it first")
    return ImageManifest.from_dict(rec.manifest, file=str(records.path(kind, name)))


def verify_stored(*, store: ArtifactStore, records: BuildRecords, name: str, workdir: Path) -> list[str]:
    """Read the stored Apps image back (no mounting) and list every way it differs from its manifest."""
    manifest = manifest_of(records, "apps", name)
    try:
        blob = store.path_of(name)
    except ArtifactError as exc:
        return [str(exc)]
    return vhdx.verify_image(blob, manifest, workdir=_ensure(workdir))


def create_instrument_disks(out_dir: Path, *, vm: str, sizes_gb: dict[str, int], workdir: Path
                            ) -> dict[str, ImageManifest]:
    """The empty, labelled Settings, Var and Data VHDX of a new instrument, side by side in ``out_dir``.

    An existing disk is never overwritten (Var and Data hold data that must outlive everything).
    """
    check_name(vm, field="vm")
    out_dir = _ensure(out_dir)
    made = {}
    for role, label in EMPTY_DISKS.items():
        size = sizes_gb.get(role)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InputError("disk size must be a whole number of GiB", field=f"sizes_gb.{role}", value=size,
                             fix="give 1 or more")
        target = out_dir / f"{vm}-{role}.vhdx"
        if target.exists():
            raise InputError("disk already exists; refusing to overwrite it", file=str(target),
                             fix="move it away first if it really must be recreated")
        made[role] = vhdx.create_empty_volume(target, label=label, size_bytes=size * 1024 ** 3,
                                              workdir=_ensure(workdir))
    return made


# --- hyperv build hosts ------------------------------------------------------------------------------

def apps_build_step(host: Host, rel: ReleaseDefinition, *, source_path: str, size_gb: int) -> Step:
    """The ``build_apps_disk`` step that makes the release's Apps master on a Windows build host."""
    check_windows_path(source_path, field="--source")
    root = host.storage_root.rstrip("\\")
    return Step("build_apps_disk", host.name, {
        "vhd_path": f"{root}\\builds\\{rel.apps.name}.vhdx", "source_path": source_path,
        "label": APPS_LABEL, "size_gb": size_gb, "work_root": f"{root}\\tmp",
        "expect_version": rel.apps.version},
        f"build the Apps disk of {rel.id} on {host.name} from {source_path}")


def build_apps_on_host(*, records: BuildRecords, run: Any, host: Host, rel: ReleaseDefinition,
                       source_path: str, size_gb: int) -> BuildRecord:
    """Run the build step on the host and record it. ``run`` carries out one step (the dispatcher)."""
    step = apps_build_step(host, rel, source_path=source_path, size_gb=size_gb)
    rec = records.start(kind="apps", name=rel.apps.name, release=rel.id,
                        inputs={**step.inputs, "builder": f"{host.provider}:{host.name}"})
    try:
        result = run(step)
    except BaseException as exc:
        records.fail(rec, str(exc) or type(exc).__name__)
        raise
    manifest = None
    if isinstance(result.get("files"), list):
        manifest = ImageManifest.from_dict({
            "format": 1, "label": APPS_LABEL, "partition_name": "Basic data partition",
            "disk_size": int(result.get("disk_size") or 0), "volume_size": int(result.get("volume_size") or 0),
            "image_size": int(result["size"]), "image_sha256": result["sha256"], "files": result["files"],
            "directories": result.get("directories") or [], "tools": {"builder": f"{host.provider}:{host.name}"},
        }, file=f"result of build_apps_disk on {host.name}").to_dict()
    rec.inputs["location"] = f"{host.name}:{step.inputs['vhd_path']}"
    return records.finish(rec, sha256=result["sha256"], size=int(result["size"]),
                          tools={"builder": f"{host.provider}:{host.name}"}, manifest=manifest)


# --- OS templates ------------------------------------------------------------------------------------

OS_LABEL = "OS"


def build_lab_template(*, store: ArtifactStore, records: BuildRecords, version: str, base: Path,
                       workdir: Path) -> BuildRecord:
    """An OS template VHDX (one NTFS volume labelled OS) built here from a base tree, stored read-only with
    its manifest. A version is built once: a stored template is never rebuilt, whatever the base tree."""
    check_template_version(version, field="--version")
    base = Path(base)
    if not base.is_dir():
        raise InputError("base tree not found", field="--base", value=str(base),
                         fix="give the folder that holds the template's C: drive")
    previous = records.get("os-template", version)
    if previous is not None and previous.status == "ok" and store.exists(version) and previous.manifest:
        built = ImageManifest.from_dict(previous.manifest).files
        if hash_tree(scan_tree(base)) == built:
            return previous  # the same tree again: nothing to do
        raise ArtifactError(f"OS template {version} is already built ({store.get(version).sha256}) from another "
                            "tree; templates are never modified: build it under a new version")
    _refuse_existing(store, version)
    rec = records.start(kind="os-template", name=version, release=None,
                        inputs={"base": str(base.resolve()), "label": OS_LABEL, "builder": "linux"})
    return _build_and_store(store=store, records=records, rec=rec, tree=base, label=OS_LABEL, kind="os-template",
                            source=f"build-template from {base}", workdir=workdir)[0]


def template_build_step(host: Host, version: str, *, iso_path: str, unattend: str, provision: str,
                        image_index: int = 1, size_gb: int = 64, memory_mb: int = 4096,
                        timeout_s: int = 7200) -> Step:
    """The ``build_template`` step for a hyperv build host (see templates/powershell/build_template.ps1.j2)."""
    check_template_version(version, field="--version")
    check_windows_path(iso_path, field="--iso")
    root = host.storage_root.rstrip("\\")
    return Step("build_template", host.name, {
        "vm": f"BUILD-{version}"[:64], "version": version, "iso_path": iso_path, "image_index": image_index,
        "vhd_path": f"{root}\\builds\\{version}.vhdx", "work_root": f"{root}\\tmp", "size_gb": size_gb,
        "memory_mb": memory_mb, "switch": host.switch,
        "unattend": unattend, "provision": provision, "timeout_s": timeout_s},
        f"build OS template {version} on {host.name} from {iso_path}")


def build_template_on_host(*, records: BuildRecords, run: Any, step: Step) -> BuildRecord:
    version = step.inputs["version"]
    rec = records.start(kind="os-template", name=version, release=None,
                        inputs={k: v for k, v in step.inputs.items() if k not in ("unattend", "provision")}
                        | {"builder": f"hyperv:{step.host}"})
    try:
        result = run(step)
    except BaseException as exc:
        records.fail(rec, str(exc) or type(exc).__name__)
        raise
    return records.finish(rec, sha256=result["sha256"], size=int(result["size"]),
                          tools={"builder": f"hyperv:{step.host}"}, manifest=None)


# --- images built on a Windows build host ---------------------------------------------------------------


def manifest_from_image(image: Path, *, workdir: Path) -> ImageManifest:
    """The manifest of an image built elsewhere, by reading it back (the build host reported only the
    image's own hash): what `verify-image` later compares the stored image with."""
    with tempfile.TemporaryDirectory(prefix="read-manifest-", dir=_ensure(workdir)) as tmp:
        dest = Path(tmp) / "files"
        back = vhdx.read_image_files(image, dest, workdir=Path(tmp))
        files, dirs = [], []
        for dirpath, dirnames, filenames in os.walk(dest):
            rel_dir = Path(dirpath).relative_to(dest)
            dirs += [(rel_dir / d).as_posix() for d in dirnames]
            for f in filenames:
                sha, size = sha256_and_size(Path(dirpath) / f)
                files.append(FileEntry((rel_dir / f).as_posix(), size, sha))
    return ImageManifest(label=back.label, partition_name=back.partition_name, disk_size=back.disk_size,
                         volume_size=back.volume_size, image_size=image.stat().st_size,
                         image_sha256=sha256_file(image), files=sorted(files, key=lambda e: e.path),
                         directories=sorted(dirs), tools={"builder": "read back after import"})


def import_built(*, store: ArtifactStore, records: BuildRecords, rec: BuildRecord, image: Path,
                 workdir: Path) -> BuildRecord:
    """Take an image a build host made (and copied to the share, ``image`` as this machine sees it) into the
    store: refused unless its sha256 is the one the host's Get-FileHash reported; its manifest is the
    host's when it sent one, else read back from the image."""
    kind = "os-template" if rec.kind == "os-template" else "apps"
    man = store.add(image, name=rec.name, kind=kind, source=f"built on {rec.inputs.get('builder')}", suffix=".vhdx")
    if man.sha256 != rec.sha256:
        raise ArtifactError(f"{image} has sha256 {man.sha256}, the build host reported {rec.sha256}: the copy "
                            "was corrupted on the way; it is not used")
    read_back = manifest_from_image(store.path_of(rec.name), workdir=workdir).to_dict()
    # The host's own list of what it put in the image (its source files) is the stronger claim; the disk's
    # geometry and the image's hash are what the image itself says.
    geometry = ("label", "partition_name", "disk_size", "volume_size", "image_size", "image_sha256")
    manifest = {**rec.manifest, **{k: read_back[k] for k in geometry}} if rec.manifest else read_back
    rec.inputs["stored"] = True
    return records.finish(rec, sha256=rec.sha256, size=rec.size or man.size, tools=rec.tools, manifest=manifest)
