"""Release ids and release definitions (``releases/<id>.yaml``, one file per release).

A release is a named, immutable set of artifacts. Its id orders releases numerically, so "newest" and
"previous" are computed rather than guessed from file names or dates.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imaging.core.errors import InputError
from imaging.core.quoting import check_name, check_relpath, check_sha256

# Strict on purpose: no leading zeros, upper-case C only, no surrounding or inner whitespace.
_RELEASE_ID_RE = re.compile(r"(2[0-9]{3})C([1-9][0-9]?)\.(0|[1-9][0-9]{0,2})")
_FORM = "<year>C<cycle>.<patch>, e.g. 2026C3.0 (year 2000-2999, cycle 1-99, patch 0-999, no leading zeros)"


@functools.total_ordering
@dataclass(frozen=True)
class ReleaseId:
    """A release id ``<year>C<cycle>.<patch>``, e.g. ``2026C3.0`` = year 2026, cycle 3, patch 0.

    Rules enforced by :meth:`parse` (it refuses, never repairs):

    - year: exactly 4 digits, 2000-2999;
    - a capital ``C`` (``c`` is refused);
    - cycle: 1-99 without leading zero (``2026C03.0`` is refused, ``2026C0.0`` too);
    - a dot, then patch: 0-999 without leading zero (``0`` itself is fine);
    - nothing else: no whitespace, no prefix such as ``v``, no suffix.

    Ordering is numeric over (year, cycle, patch): ``2026C10.0 > 2026C9.3`` and ``2027C1.0 > 2026C9.9``.
    """

    year: int
    cycle: int
    patch: int

    def __post_init__(self) -> None:
        # Constructing directly must obey the same ranges as parsing, or str() would produce unparsable ids.
        for field, value, low, high in (("year", self.year, 2000, 2999), ("cycle", self.cycle, 1, 99),
                                        ("patch", self.patch, 0, 999)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"release id {field} out of range {low}-{high}", field=field, value=value,
                                 fix=f"release ids have the form {_FORM}")

    @classmethod
    def parse(cls, text: object, *, file: str | None = None, field: str = "id") -> ReleaseId:
        """Parse ``text`` exactly; raise :class:`InputError` naming the value and the expected form."""
        if not isinstance(text, str):
            raise InputError("a release id must be a string", file=file, field=field, value=text,
                             fix=f"write it as {_FORM} (quote it in YAML)")
        m = _RELEASE_ID_RE.fullmatch(text)  # fullmatch: unlike ``$``, no trailing newline slips through
        if not m:
            raise InputError("not a release id", file=file, field=field, value=text,
                             fix=f"write it as {_FORM}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.year}C{self.cycle}.{self.patch}"

    def _key(self) -> tuple[int, int, int]:
        return (self.year, self.cycle, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ReleaseId):
            return NotImplemented
        return self._key() < other._key()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OsTemplateRef(_Strict):
    """The OS template artifact a release boots from."""

    name: str
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, field="name")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        return None if v is None else check_sha256(v)


class AppsRef(OsTemplateRef):
    """The Apps master artifact plus the version string the health check expects inside the guest."""

    version: str = Field(min_length=1)


class Revocation(_Strict):
    """Why a release must no longer be deployed; kept in the file so the history stays readable."""

    reason: str = Field(min_length=1)
    when: datetime
    who: str = Field(min_length=1)


# Where settings are rendered from unless a release says otherwise (the templates at the checked-out commit).
DEFAULT_TEMPLATES_DIR = "templates/settings"
_GIT_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


class SettingsTemplates(_Strict):
    """The settings templates a release renders from: a folder of the project at a git ref.

    ``new-release`` records the commit it was made at, so a release keeps rendering the format it was made
    for however far the templates move on; the shipped older releases name frozen folders instead
    (``templates/settings-history/vN``), which every clone has.
    """

    ref: str = "HEAD"
    dir: str = DEFAULT_TEMPLATES_DIR

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not _GIT_REF_RE.fullmatch(v) or ".." in v or v.endswith((".", "/", ".lock")):
            raise InputError("not a git ref", field="ref", value=v,
                             fix="give a commit id, a tag or a branch name (letters, digits, . _ / -)")
        return v

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        return check_relpath(v, field="dir")


class ReleaseDefinition(_Strict):
    """One ``releases/<id>.yaml``: what a release is made of. Immutable once published."""

    id: str
    os_template: OsTemplateRef
    apps: AppsRef
    settings_version: int = Field(ge=1, strict=True)
    includes_hotfixes: list[str] = Field(default_factory=list)
    notes: str
    # None: the templates at HEAD (or at the --settings-ref a command is given)
    settings_templates: SettingsTemplates | None = None
    revoked: Revocation | None = None
    # The lab may build this release's missing images from its built-in sample trees (the shipped demo
    # releases); a release a facility authors runs only what was built for it.
    samples: bool = False

    @field_validator("includes_hotfixes")
    @classmethod
    def _hotfixes(cls, v: list[str]) -> list[str]:
        # Hotfix ids become file and record names: same rule as any other name.
        return [check_name(h, field="includes_hotfixes") for h in v]

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return str(ReleaseId.parse(v))

    @property
    def release_id(self) -> ReleaseId:
        return ReleaseId.parse(self.id)

    @property
    def templates(self) -> SettingsTemplates:
        """Where this release's settings are rendered from (the default when the file names none)."""
        return self.settings_templates or SettingsTemplates()

    @property
    def is_revoked(self) -> bool:
        return self.revoked is not None


def _pydantic_to_input_error(err: ValidationError, file: str) -> InputError:
    """Turn pydantic's first complaint into our error: file, dotted field, bad value, fix."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    kind = first.get("type", "")
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, InputError):
        # One of our validators refused (InputError is a ValueError, so pydantic carries it): keep its
        # message and fix, add the file and the full field path.
        return InputError(ctx_err.reason, file=file, field=field, value=ctx_err.value, fix=ctx_err.fix)
    if kind == "extra_forbidden":
        fix = "remove it; allowed keys are " + _allowed_keys(first.get("loc", ()))
        return InputError("unknown key", file=file, field=field, value=first.get("input"), fix=fix)
    if kind == "missing":
        return InputError("required key is missing", file=file, field=field, fix="add it")
    return InputError(first.get("msg", "invalid value"), file=file, field=field,
                      value=first.get("input"),
                      fix="correct the value; the sample files in releases/ show each field")


def _allowed_keys(loc: Iterable[Any]) -> str:
    model: type[BaseModel] = ReleaseDefinition
    for part in list(loc)[:-1]:
        ann = model.model_fields.get(str(part))
        sub = getattr(ann, "annotation", None) if ann else None
        # Optional[Model] annotations: pick the model out of the union.
        for cand in getattr(sub, "__args__", (sub,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
    return ", ".join(model.model_fields)


def load_release(path: Path) -> ReleaseDefinition:
    """Load and validate one release file; the file name must equal the id inside it."""
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML: {e}", file=file, fix="correct the YAML syntax") from e
    if not isinstance(data, dict):
        raise InputError("a release file must be a mapping of keys", file=file, value=type(data).__name__,
                         fix="start with 'id: <release id>'")
    try:
        rel = ReleaseDefinition.model_validate(data)
    except ValidationError as e:
        raise _pydantic_to_input_error(e, file) from None
    if path.stem != rel.id:
        raise InputError("the file name must equal the release id", file=file, field="id", value=rel.id,
                         fix=f"rename the file to {rel.id}.yaml or correct the id")
    return rel


# Files in releases/ that are not release definitions (labels live beside the releases they name).
NOT_RELEASES = frozenset({"labels.yaml"})


def load_releases(directory: Path) -> dict[str, ReleaseDefinition]:
    """Load every ``<id>.yaml`` in ``directory``; keyed by id string."""
    if not directory.is_dir():
        raise InputError("release directory not found", file=str(directory),
                         fix="create it and add one <id>.yaml per release")
    out: dict[str, ReleaseDefinition] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix == ".yml":
            raise InputError("release files must end in .yaml", file=str(path),
                             fix=f"rename it to {path.stem}.yaml")
        if path.suffix != ".yaml" or path.name in NOT_RELEASES:
            continue
        rel = load_release(path)
        out[rel.id] = rel
    return out


def newest_first(releases: Iterable[ReleaseDefinition] | dict[str, ReleaseDefinition]
                 ) -> list[ReleaseDefinition]:
    """Releases ordered by id, newest first (numeric, not alphabetical)."""
    items = releases.values() if isinstance(releases, dict) else releases
    return sorted(items, key=lambda r: r.release_id, reverse=True)
