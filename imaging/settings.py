"""Per-instrument settings rendered from templates/settings/ (first renderer; git refs come with issue 5)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .errors import InputError
from .hashing import sha256_bytes


@dataclass(frozen=True)
class RenderedSettings:
    files: dict[str, bytes]
    provenance: dict[str, Any]
    sha256: str
    version: int
    dirty: bool


def render_settings(*, repo: Path, instrument: str, vm: str, variables: Mapping[str, Any], ref: str = "HEAD",
                    settings_repo: Path | None = None, allow_dirty: bool = False) -> RenderedSettings:
    tdir = Path(repo) / "templates" / "settings"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(tdir), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    files: dict[str, bytes] = {}
    for t in sorted(p for p in tdir.rglob("*.j2")):
        rel = t.relative_to(tdir).as_posix()
        try:
            files[rel.removesuffix(".j2")] = env.get_template(rel).render(**variables).encode()
        except jinja2.UndefinedError as exc:
            raise InputError(f"{exc} while rendering for {instrument}", file=str(t)) from None
    prov = {"instrument": instrument, "vm": vm, "ref": ref, "commit": None,
            "files": {k: sha256_bytes(v) for k, v in files.items()}}
    files[".imaging/provenance.json"] = json.dumps(prov, indent=2, sort_keys=True).encode() + b"\n"
    return RenderedSettings(files=files, provenance=prov, sha256=sha256_bytes(json.dumps(prov).encode()),
                            version=1, dirty=False)
