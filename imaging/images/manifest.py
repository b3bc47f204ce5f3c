"""The record of what a disk image holds: written at build time, checked by verification.

A manifest lists every file (relative POSIX path, size, sha256) and folder of the image's volume, sorted,
with the image file's own size and sha256 and the versions of the tools that made it. It round-trips
through JSON and refuses a malformed file with the field that is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import InputError
from imaging.core.quoting import check_label, check_relpath, check_sha256

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, posix separators
    size: int
    sha256: str


@dataclass
class ImageManifest:
    """What an image holds and how it was made; JSON round-trips through :meth:`to_json`/:meth:`from_json`.

    ``files`` and ``directories`` are sorted, so the same tree always gives the same lists. ``image_sha256``
    covers the VHDX file bytes, which differ between two builds of the same tree (see docs/images.md).
    """

    label: str
    partition_name: str
    disk_size: int  # the virtual disk's size in bytes
    volume_size: int  # the NTFS partition's size in bytes
    image_size: int  # the VHDX file's size in bytes
    image_sha256: str
    files: list[FileEntry] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def content_key(self) -> dict[str, Any]:
        """The parts that are the same for every build of the same tree and label."""
        return {"label": self.label, "partition_name": self.partition_name, "disk_size": self.disk_size,
                "volume_size": self.volume_size, "files": [asdict(f) for f in self.files],
                "directories": list(self.directories)}

    @classmethod
    def from_dict(cls, data: Any, *, file: str | None = None) -> ImageManifest:
        if not isinstance(data, dict):
            raise InputError("an image manifest must be a JSON object", file=file)
        if data.get("format") != MANIFEST_FORMAT:
            raise InputError("unknown manifest format", file=file, field="format", value=data.get("format"),
                             fix=f"rebuild the image; this version reads format {MANIFEST_FORMAT}")
        try:
            files = [FileEntry(path=check_relpath(f["path"], field="files.path", file=file),
                               size=_nonneg_int(f["size"], "files.size", file),
                               sha256=check_sha256(f["sha256"], field="files.sha256", file=file))
                     for f in data["files"]]
            manifest = cls(
                label=check_label(data["label"], field="label", file=file),
                partition_name=str(data["partition_name"]),
                disk_size=_nonneg_int(data["disk_size"], "disk_size", file),
                volume_size=_nonneg_int(data["volume_size"], "volume_size", file),
                image_size=_nonneg_int(data["image_size"], "image_size", file),
                image_sha256=check_sha256(data["image_sha256"], field="image_sha256", file=file),
                files=files,
                directories=[check_relpath(d, field="directories", file=file) for d in data["directories"]],
                tools={str(k): str(v) for k, v in data.get("tools", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"image manifest is missing or mistypes {exc}", file=file,
                             fix="use a manifest written by imaging.images.vhdx") from None
        return manifest

    @classmethod
    def from_json(cls, text: str, *, file: str | None = None) -> ImageManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc}", file=file) from None
        return cls.from_dict(data, file=file)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ImageManifest:
        return cls.from_json(path.read_text(encoding="utf-8"), file=str(path))


def _nonneg_int(value: Any, name: str, file: str | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError("not a non-negative integer", file=file, field=name, value=value)
    return value
