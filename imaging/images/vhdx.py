"""Real VHDX disk images built, read back and verified on Linux without root.

A disk here is what Hyper-V and Windows expect of a data disk: a GPT with one "Microsoft basic data"
partition at 1 MiB holding one labelled NTFS volume. The volume is made and filled without mounting
anything: ``mkntfs`` formats a sparse file, ``wimlib-imagex`` captures the folder tree into a WIM and applies
it straight onto the unmounted NTFS volume, we write the GPT in Python (:mod:`imaging.images.gpt`), and
``qemu-img`` turns the raw disk into a dynamic VHDX. Reading back runs the same path in reverse.

Every build returns an :class:`ImageManifest` (file list with sizes and sha256, the image's sha256, tool
versions) that :func:`verify_image` checks an image against.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_file
from imaging.core.quoting import check_label
from imaging.images import gpt
from imaging.images import tools as imagetools
from imaging.images.manifest import FileEntry, ImageManifest
from imaging.images.source_tree import (
    MIB,
    MIN_VOLUME_BYTES,
    WINDOWS_MANAGED,
    SourceTree,
    estimate_volume_size,
    hash_tree,
    scan_tree,
)


@dataclass(frozen=True)
class ReadBack:
    """What :func:`read_image_files` found in an image."""

    label: str
    partition_name: str
    disk_size: int
    volume_size: int
    disk_guid: str
    partition_guid: str


def _volume_size_for(size_bytes: int | None, scanned: SourceTree | None) -> int:
    """The NTFS volume size that makes a disk of ``size_bytes`` (GPT and alignment take 2 MiB)."""
    if size_bytes is None:
        assert scanned is not None
        return estimate_volume_size(scanned)
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes % MIB:
        raise InputError("disk size must be a whole number of MiB", field="size_bytes", value=size_bytes,
                         fix=f"round it up to a multiple of {MIB}")
    volume = size_bytes - 2 * MIB
    if volume < MIN_VOLUME_BYTES:
        raise InputError("disk size is too small for a GPT and an NTFS volume", field="size_bytes",
                         value=size_bytes, fix=f"use at least {MIN_VOLUME_BYTES + 2 * MIB} bytes")
    if scanned is not None:
        data = scanned.data_bytes
        if data > volume:
            raise InputError(f"the tree holds {data} bytes of file data, more than the {volume}-byte volume",
                             field="size_bytes", value=size_bytes, fix="give a bigger size or none at all")
    return volume


# --- building ------------------------------------------------------------------------------------------

class _Scratch:
    """A private folder under the caller's workdir; big intermediates are deleted on a helper thread.

    Deleting a GiB-sized file whose pages are still dirty takes the kernel a noticeable time; doing it
    alongside the next step (qemu-img, the image hash) instead of before it takes it off the build's path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratch-rm")

    def discard(self, file: Path) -> None:
        self._pool.submit(file.unlink, True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def _scratch(workdir: Path, prefix: str) -> Iterator[_Scratch]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = _Scratch(Path(tempfile.mkdtemp(prefix=prefix, dir=workdir)))
    try:
        yield scratch
    finally:
        scratch.close()


def _make_ntfs(volume: Path, size: int, label: str) -> None:
    with open(volume, "wb") as fh:
        fh.truncate(size)
    # Geometry options describe the partition at LBA 2048 so the boot sector is right for its place;
    # -T fixes the volume timestamps for reproducibility.
    imagetools.run("mkntfs", ["-F", "-Q", "-q", "-T", "-s", "512", "-p", str(gpt.ALIGN_SECTORS),
                              "-H", "255", "-S", "63", "-L", label, volume],
                   what=f"formatting the NTFS volume {label!r}")


VHDX_OPTIONS = "subformat=dynamic,block_size=1M"
"""Dynamic VHDX with 1 MiB blocks: small files scattered over the volume allocate little dead space, so the
image file stays close to the data size (Hyper-V accepts block sizes from 1 MiB to 256 MiB)."""


def assemble_disk(volume: Path, *, label: str,
                  disk_guid: uuid.UUID | None = None) -> tuple[Path, gpt.GptTable]:
    """Turn the NTFS volume file into a raw GPT disk in place: 1 MiB for the MBR and primary GPT in
    front, 1 MiB for the backup GPT behind (no data is copied where the file system allows)."""
    table = gpt.single_partition_layout(volume.stat().st_size, name=label, disk_guid=disk_guid)
    imagetools.shift_into_place(volume, gpt.MIB, gpt.MIB)
    raw = volume.with_name("disk.raw")
    os.replace(volume, raw)
    fd = os.open(raw, os.O_RDWR)
    try:
        gpt.write_table(fd, table)
    finally:
        os.close(fd)
    return raw, table


def convert_to_vhdx(raw: Path, out: Path) -> None:
    """qemu-img writes the VHDX under a hidden name that is renamed only once it is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        imagetools.run("qemu-img", ["convert", "-f", "raw", "-O", "vhdx", "-o", VHDX_OPTIONS, raw, partial],
                       what=f"converting the disk to VHDX {out}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _assemble_and_convert(volume: Path, out: Path, *, label: str, disk_guid: uuid.UUID | None,
                          scratch: _Scratch) -> gpt.GptTable:
    raw, table = assemble_disk(volume, label=label, disk_guid=disk_guid)
    convert_to_vhdx(raw, Path(out))
    scratch.discard(raw)
    return table


def _manifest(out: Path, label: str, table: gpt.GptTable, files: list[FileEntry],
              dirs: list[str]) -> ImageManifest:
    part = table.partitions[0]
    return ImageManifest(label=label, partition_name=part.name, disk_size=table.disk_sectors * gpt.SECTOR,
                         volume_size=part.size, image_size=out.stat().st_size, image_sha256=sha256_file(out),
                         files=files, directories=dirs, tools=dict(imagetools.versions()))


def build_volume_image(tree: Path, out: Path, *, label: str, size_bytes: int | None = None,
                       workdir: Path, disk_guid: uuid.UUID | None = None) -> ImageManifest:
    """Build a dynamic VHDX at ``out``: GPT, one basic-data partition named ``label``, NTFS volume
    labelled ``label`` holding exactly ``tree``.

    ``size_bytes`` is the virtual disk size (a whole number of MiB, like New-VHD -SizeBytes); by default
    the tree's size plus generous NTFS room. Input is checked in full before any tool runs. Scratch files
    go under ``workdir`` (about twice the tree's size) and are removed afterwards.
    """
    check_label(label, field="label")
    scanned = scan_tree(Path(tree))
    volume_size = _volume_size_for(size_bytes, scanned)
    imagetools.require_tools()
    with _scratch(workdir, "build-") as scratch:
        wim = scratch.path / "tree.wim"
        config = capture_config(scratch.path)
        # Capture in the background while this thread hashes the tree for the manifest: the two read the
        # same files, so the second read comes from the page cache, and two cores do the work of two.
        failure: list[BaseException] = []

        def capture() -> None:
            try:
                imagetools.run("wimlib-imagex", ["capture", tree, wim, label, "--compress=none",
                                                 "--no-acls", f"--config={config}"],
                               what=f"capturing {tree} into a WIM")
            except BaseException as exc:  # re-raised in the calling thread
                failure.append(exc)

        worker = threading.Thread(target=capture, name="wim-capture")
        worker.start()
        try:
            files = hash_tree(scanned)
        finally:
            worker.join()
        if failure:
            raise failure[0]
        volume = scratch.path / "volume.img"
        _make_ntfs(volume, volume_size, label)
        imagetools.run("wimlib-imagex", ["apply", wim, "1", volume],
                       what=f"writing the files into the NTFS volume {label!r}")
        scratch.discard(wim)
        table = _assemble_and_convert(volume, Path(out), label=label, disk_guid=disk_guid, scratch=scratch)
        return _manifest(Path(out), label, table, files, scanned.directories)


def create_empty_volume(out: Path, *, label: str, size_bytes: int, workdir: Path,
                        disk_guid: uuid.UUID | None = None) -> ImageManifest:
    """A dynamic VHDX of ``size_bytes`` with one empty NTFS volume labelled ``label`` (Settings/Var/Data).

    Everything stays sparse: a 50 GiB disk costs only the few MiB of NTFS metadata mkntfs writes.
    """
    check_label(label, field="label")
    volume_size = _volume_size_for(size_bytes, None)
    imagetools.require_tools()
    with _scratch(workdir, "empty-") as scratch:
        volume = scratch.path / "volume.img"
        _make_ntfs(volume, volume_size, label)
        table = _assemble_and_convert(volume, Path(out), label=label, disk_guid=disk_guid, scratch=scratch)
        return _manifest(Path(out), label, table, [], [])


# --- reading back ----------------------------------------------------------------------------------------

def _image_format(image: Path) -> dict[str, Any]:
    proc = imagetools.run("qemu-img", ["info", "--output=json", image], what=f"reading {image}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ImagingError(f"qemu-img info gave no JSON for {image}: {exc}") from None


def _open_disk(image: Path, scratch: Path, problems: list[str]) -> tuple[Path | None, gpt.GptTable | None]:
    """Convert the VHDX to a sparse raw disk and parse its GPT, adding what is wrong to ``problems``.

    Anything but a VHDX is refused before conversion (``-f vhdx`` then keeps qemu-img from probing).
    """
    info = _image_format(image)
    if info.get("format") != "vhdx":
        problems.append(f"image format is {info.get('format')!r}, not 'vhdx'")
        return None, None
    raw = scratch / "disk.raw"
    imagetools.run("qemu-img", ["convert", "-f", "vhdx", "-O", "raw", image, raw],
                   what=f"reading the disk in {image}")
    size = raw.stat().st_size
    with open(raw, "rb") as fh:
        fd = fh.fileno()
        table, gpt_problems = gpt.read_table(lambda off, n: os.pread(fd, n, off), size)
    problems.extend(gpt_problems)
    return raw, table


def _the_partition(table: gpt.GptTable | None, problems: list[str]) -> gpt.Partition | None:
    if table is None:
        return None
    if len(table.partitions) != 1:
        problems.append(f"expected exactly one partition, found {len(table.partitions)}")
    data = [p for p in table.partitions if p.type_guid == gpt.BASIC_DATA]
    if not data:
        problems.append("no Microsoft basic data partition")
        return None
    part = data[0]
    if part.offset % MIB:
        problems.append(f"partition starts at byte {part.offset}, not on a 1 MiB boundary")
    return part


def _extract_volume(raw: Path, part: gpt.Partition) -> Path:
    """Cut the partition out of the raw disk in place; the file becomes the bare NTFS volume."""
    imagetools.cut_out(raw, part.offset, part.size)
    volume = raw.with_name("volume.img")
    os.replace(raw, volume)
    return volume


def _ntfs_label(volume: Path) -> str:
    proc = imagetools.run("ntfslabel", ["--no-action", volume], what="reading the NTFS volume label")
    return proc.stdout.strip()


def capture_config(scratch: Path) -> Path:
    """An explicit wimlib capture configuration that excludes only :data:`WINDOWS_MANAGED`.

    Without one, wimlib applies its default exclusion list, which silently drops pagefile.sys,
    hiberfil.sys, RECYCLER and Windows\\CSC: files an Apps tree may legitimately hold.
    """
    config = scratch / "capture.ini"
    config.write_text("[ExclusionList]\n" + "".join(f"\\{name}\n" for name in WINDOWS_MANAGED),
                      encoding="utf-8")
    return config


def _volume_to_dir(volume: Path, dest: Path, scratch: Path) -> None:
    wim = scratch / "back.wim"
    config = capture_config(scratch)
    imagetools.run("wimlib-imagex", ["capture", volume, wim, "--compress=none", "--no-acls",
                                     f"--config={config}"],
                   what="reading the files of the NTFS volume")
    volume.unlink()
    imagetools.run("wimlib-imagex", ["apply", wim, "1", dest], what=f"extracting the files into {dest}")
    wim.unlink()


def read_image_files(image: Path, dest: Path, *, workdir: Path) -> ReadBack:
    """Extract every file of the image's NTFS volume into ``dest`` (absent or empty), without mounting.

    Raises :class:`ImagingError` when the image is not a VHDX with an intact GPT and one basic-data
    partition holding a readable NTFS volume.
    """
    image, dest = Path(image), Path(dest)
    if not image.is_file():
        raise InputError("image not found", file=str(image), fix="give the path of a .vhdx file")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError("destination folder is not empty", file=str(dest),
                         fix="give a new or empty folder")
    imagetools.require_tools()
    with _scratch(workdir, "read-") as tmp:
        scratch = tmp.path
        problems: list[str] = []
        raw, table = _open_disk(image, scratch, problems)
        part = _the_partition(table, problems)
        if problems or part is None or table is None or raw is None:
            raise ImagingError(f"{image}: " + "; ".join(problems or ["no partition"]))
        volume = _extract_volume(raw, part)
        label = _ntfs_label(volume)
        dest.mkdir(parents=True, exist_ok=True)
        _volume_to_dir(volume, dest, scratch)
    return ReadBack(label=label, partition_name=part.name, disk_size=table.disk_sectors * gpt.SECTOR,
                    volume_size=part.size, disk_guid=str(table.disk_guid),
                    partition_guid=str(part.unique_guid))


def _walk_dest(dest: Path) -> tuple[dict[str, Path], set[str]]:
    files: dict[str, Path] = {}
    dirs: set[str] = set()
    for root, dirnames, filenames in os.walk(dest):
        rel_root = Path(root).relative_to(dest).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        for d in dirnames:
            dirs.add(prefix + d)
        for f in filenames:
            files[prefix + f] = Path(root) / f
    return files, dirs


def verify_image(image: Path, manifest: ImageManifest, *, workdir: Path) -> list[str]:
    """Every way ``image`` differs from ``manifest``, in plain words; an empty list means it matches.

    Checks the image's sha256 and size, that it is a VHDX, the GPT (signatures, CRCs, one basic-data
    partition named as the label), the NTFS label, and every file's presence, size and sha256, and that
    there are no extra files or folders. A damaged byte in unused space shows as "image sha256 mismatch".
    """
    image = Path(image)
    if not image.is_file():
        return [f"image not found: {image}"]
    problems: list[str] = []
    digest = sha256_file(image)
    if digest != manifest.image_sha256:
        problems.append(f"image sha256 mismatch: expected {manifest.image_sha256}, got {digest}")
    size = image.stat().st_size
    if size != manifest.image_size:
        problems.append(f"image size {size} differs from the manifest's {manifest.image_size}")
    imagetools.require_tools()
    with _scratch(workdir, "verify-") as tmp:
        scratch = tmp.path
        try:
            raw, table = _open_disk(image, scratch, problems)
        except ImagingError as exc:
            return [*problems, f"cannot read the disk: {exc}"]
        part = _the_partition(table, problems)
        if table is not None and table.disk_sectors * gpt.SECTOR != manifest.disk_size:
            problems.append(f"disk size {table.disk_sectors * gpt.SECTOR} differs from the manifest's "
                            f"{manifest.disk_size}")
        if part is None or raw is None:
            return problems
        if part.name != manifest.partition_name:
            problems.append(f"partition name is {part.name!r}, expected {manifest.partition_name!r}")
        if part.size != manifest.volume_size:
            problems.append(f"partition size {part.size} differs from the manifest's {manifest.volume_size}")
        volume = _extract_volume(raw, part)
        try:
            label = _ntfs_label(volume)
        except ImagingError as exc:
            return [*problems, f"cannot read the NTFS volume: {exc}"]
        if label != manifest.label:
            problems.append(f"NTFS label is {label!r}, expected {manifest.label!r}")
        dest = scratch / "files"
        try:
            _volume_to_dir(volume, dest, scratch)
        except ImagingError as exc:
            return [*problems, f"cannot read the files of the NTFS volume: {exc}"]
        problems.extend(_compare_files(dest, manifest))
    return problems


def _compare_files(dest: Path, manifest: ImageManifest) -> list[str]:
    problems = []
    found, found_dirs = _walk_dest(dest)
    for entry in manifest.files:
        path = found.pop(entry.path, None)
        if path is None:
            problems.append(f"missing file: {entry.path}")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"size mismatch: {entry.path} is {size} bytes, expected {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"sha256 mismatch: {entry.path}")
    problems.extend(f"extra file: {rel}" for rel in sorted(found))
    expected_dirs = set(manifest.directories)
    problems.extend(f"missing folder: {d}" for d in sorted(expected_dirs - found_dirs))
    problems.extend(f"extra folder: {d}" for d in sorted(found_dirs - expected_dirs))
    return problems


def qemu_info(image: Path) -> dict[str, Any]:
    """``qemu-img info --output=json`` for an image (format, virtual size, allocated size)."""
    return _image_format(Path(image))


__all__ = ["WINDOWS_MANAGED", "FileEntry", "ImageManifest", "ReadBack", "SourceTree", "assemble_disk",
           "build_volume_image", "capture_config", "convert_to_vhdx", "create_empty_volume",
           "estimate_volume_size", "qemu_info", "read_image_files", "scan_tree",
           "verify_image"]
