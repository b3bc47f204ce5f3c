"""The two texts a hyperv OS template build injects into the new Windows disk: the unattend answer file
(XML, every value escaped by Jinja's autoescape) and the provisioning script (PowerShell, every value through
``ps_literal`` and the step templates' unquoted-output check)."""

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
