"""The answer files imaging writes (XML, every value escaped by Jinja's autoescape): the one a hyperv OS
template build injects with its provisioning script (PowerShell, every value through ``ps_literal`` and the
step templates' unquoted-output check), and each instrument's, written into a new OS disk before its first
boot so that the generalized template becomes that instrument."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2

from imaging.core.errors import InputError
from imaging.core.pstemplates import make_environment
from imaging.core.redaction import check_secret
from imaging.images.build import check_template_version

PROVISION_PATH = "C:\\Windows\\Setup\\Scripts\\provision.ps1"


@dataclass(frozen=True)
class TemplateSettings:
    """What the answer file and provisioning script need; defaults suit the facility's instrument PCs."""

    version: str
    admin_password: str  # the build account's, removed from the disk before sysprep; kept out of every log
    computer_name: str = "*"
    time_zone: str = "GMT Standard Time"
    organization: str = "Facility"
    owner: str = "Instrument control"
    locale: str = "en-GB"
    input_locale: str = "en-GB"
    ui_language: str = "en-US"
    product_key: str | None = None
    features: list[str] = field(default_factory=list)


def _xml_env(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates / "unattend")), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                              lstrip_blocks=True)


def render_unattend(settings: TemplateSettings, *, templates: Path) -> str:
    check_template_version(settings.version, field="version")
    if not settings.admin_password:
        raise InputError("the build account needs a password", field="admin_password",
                         fix="set IMAGING_TEMPLATE_PASSWORD for the build (it is removed before sysprep)")
    check_secret(settings.admin_password, field="IMAGING_TEMPLATE_PASSWORD")  # kept out of every log from here
    values = asdict(settings)
    values["provision_command"] = (f"powershell.exe -NoProfile -ExecutionPolicy Bypass -File {PROVISION_PATH}")
    return _xml_env(Path(templates)).get_template("autounattend.xml.j2").render(**values)


def render_provision(settings: TemplateSettings, *, templates: Path) -> str:
    check_template_version(settings.version, field="version")
    env = make_environment(Path(templates) / "provision")
    return env.get_template("provision.ps1.j2").render(version=settings.version, features=list(settings.features))


# Filled on the host from the credential source when the answer file is written (never in a plan or log).
SECRET_MARKERS = ("@@GUEST_USER@@", "@@GUEST_PASSWORD@@", "@@JOIN_USER@@", "@@JOIN_PASSWORD@@")


def render_instrument_answer(computer_name: str, identity: object, *, templates: Path) -> str:
    """The answer file of one instrument's new OS disk: its computer name (the VM's), time zone, locale, the
    local administrator (the guest credential, by marker) and an optional domain join (by marker)."""
    values = {k: getattr(identity, k) for k in ("time_zone", "locale", "input_locale", "ui_language", "domain",
                                                "domain_ou")}
    return _xml_env(Path(templates)).get_template("instrument.xml.j2").render(computer_name=computer_name,
                                                                             **values)
