"""What the inventory says of an instrument's guest operating system: who a new guest is at its first boot
(its answer file), and, for a hand-made machine imaging adopts, where its data and its users' files live."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pydantic import Field, field_validator

from imaging.core.quoting import check_windows_name, check_windows_path
from imaging.model.base import StrictModel


class AdoptSpec(StrictModel):
    """Where a hand-made instrument PC keeps what must survive its adoption (``adopt:`` in defaults.yaml or
    an instrument file): data, the old control system's var and settings folders, the software's own
    folders (never user files), and the user profile folders whose files are rescued."""

    data_folders: tuple[str, ...] = ("C:\\data",)
    var_folders: tuple[str, ...] = ()
    settings_folders: tuple[str, ...] = ()
    software_folders: tuple[str, ...] = ()
    # The old system's folders whose state both sides need (its run-number folder): copied at adoption onto
    # the instrument's Shared disk, and linked there in the legacy VM, so both sides count on. An instrument
    # without a Shared disk copies them to Var\legacy\ like var folders.
    shared_folders: tuple[str, ...] = ()
    user_roots: tuple[str, ...] = ("C:\\Users",)
    user_folders: tuple[str, ...] = ("Desktop", "Documents", "Downloads")
    system_folders: tuple[str, ...] = ("C:\\Windows", "C:\\Program Files", "C:\\Program Files (x86)",
                                       "C:\\ProgramData", "C:\\$Recycle.Bin", "C:\\System Volume Information",
                                       "C:\\pagefile.sys", "C:\\swapfile.sys", "C:\\hiberfil.sys")
    # Retirement of the legacy side: the date agreed for it, and the days the current side must have run
    # without a switch back before `invoke retire-legacy` deletes the old VM.
    retire_after: date | None = None
    retire_min_days: int = Field(default=14, ge=0)

    @field_validator("data_folders", "var_folders", "settings_folders", "software_folders", "shared_folders",
                     "user_roots", "system_folders")
    @classmethod
    def _paths(cls, v: tuple[str, ...], info: Any) -> tuple[str, ...]:
        return tuple(check_windows_path(p, field=f"adopt.{info.field_name}") for p in v)

    @field_validator("user_folders")
    @classmethod
    def _folders(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_windows_name(p, field="adopt.user_folders") for p in v)


class IdentitySpec(StrictModel):
    """Who a new guest is at its first boot (the per-instrument answer file): its computer name is the VM's
    name; time zone, locale and an optional domain come from here. The local administrator is the guest
    credential (from the environment, never here), so PowerShell Direct works with it from the first boot."""

    time_zone: str = "GMT Standard Time"
    locale: str = "en-GB"
    input_locale: str = "en-GB"
    ui_language: str = "en-US"
    domain: str | None = None  # joined at first boot with IMAGING_DOMAIN_JOIN_USER / _PASSWORD
    domain_ou: str | None = None

    @field_validator("time_zone", "locale", "input_locale", "ui_language", "domain_ou")
    @classmethod
    def _text(cls, v: str | None, info: Any) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[A-Za-z0-9 ._,=()+:-]{1,200}", v):
            raise ValueError(f"{info.field_name} holds characters an answer file does not need")
        return v

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}", v):
            raise ValueError("not a DNS domain name like controls.example.org")
        return v




# --- which guest services read which settings (an instrument's ``settings_services``) ---------------------

_SETTINGS_PATH = re.compile(r"[A-Za-z0-9_.{}-]+(/[A-Za-z0-9_.{}-]+)*/?")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")


def check_settings_services(v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Keys are paths of the Settings volume (a folder ends in /), values Windows service names."""
    for path, services in v.items():
        if not _SETTINGS_PATH.fullmatch(path) or ".." in path.split("/"):
            raise ValueError(f"{path!r} is not a path of the Settings volume (forward slashes, a folder ends in /)")
        for name in services:
            if not _SERVICE.fullmatch(name):
                raise ValueError(f"{name!r} under {path!r} is not a Windows service name")
    return v


def services_reading(mapping: dict[str, tuple[str, ...]], paths: list[str]) -> tuple[list[str], list[str]]:
    """The services that read any of ``paths`` (settings relpaths), and the paths no service is named for.
    imaging's own files (``.imaging/``) are read by no program."""
    services: set[str] = set()
    unread = []
    for rel in paths:
        if rel.startswith(".imaging/"):
            continue
        hits = [names for key, names in mapping.items() if rel == key or (key.endswith("/") and rel.startswith(key))]
        if not hits:
            unread.append(rel)
        services.update(n for names in hits for n in names)
    return sorted(services), unread
