"""The fleet's desired state, read from `instruments/`: hosts, groups and one YAML file per instrument.

Everything is validated before any task acts: unknown keys, wrong types, unknown hosts or groups,
duplicate VM names, duplicate volume labels and unsafe names are all reported together, each naming the
file, the field, the bad value and the fix.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from imaging.core.errors import InputError, ValidationFailed
from imaging.core.git import dirty_paths, is_repo, run_git, toplevel
from imaging.core.quoting import check_label, check_name, check_windows_name, check_windows_path
from imaging.model.base import StrictModel
from imaging.model.guests import AdoptSpec, IdentitySpec, check_settings_services, services_reading

ROLES = ("os", "apps", "settings", "var", "data", "shared")
DATA_ROLES = ("apps", "settings", "var", "data", "shared")  # roles that carry a labelled volume linked in the guest
# Never deleted, never recreated, never wiped. "shared" is the small disk an adopted instrument's two sides
# both use (the old control system's run number, say); only instruments whose file gives one have it.
PERSISTENT_ROLES = ("var", "data", "shared")
SLOTS = {"os": 0, "apps": 1, "settings": 2, "var": 3, "data": 4, "shared": 5}

HOSTS_FILE = "hosts.yaml"
GROUPS_FILE = "groups.yaml"
DEFAULTS_FILE = "defaults.yaml"
FLEET_DIR = "fleet"


_Model = StrictModel


class DiskSpec(_Model):
    """One data disk of an instrument: its volume label, size and where the guest links it."""

    label: str
    size_gb: int = Field(gt=0, le=65536)
    link: str

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        return check_label(v, field="label")

    @field_validator("link")
    @classmethod
    def _link(cls, v: str) -> str:
        check_windows_path(v, field="link")
        if not v.upper().startswith("C:\\"):
            raise ValueError("guest links must be on the guest's C: drive")
        return v


class Disks(_Model):
    apps: DiskSpec
    settings: DiskSpec
    var: DiskSpec
    data: DiskSpec
    shared: DiskSpec | None = None

    def by_role(self) -> dict[str, DiskSpec]:
        roles = {"apps": self.apps, "settings": self.settings, "var": self.var, "data": self.data}
        return roles | ({"shared": self.shared} if self.shared else {})

    def persistent(self) -> tuple[str, ...]:
        """The persistent roles this instrument has: var and data always, shared when its file gives one."""
        return tuple(r for r in PERSISTENT_ROLES if r in self.by_role())


class Host(_Model):
    """A Hyper-V server (or its lab stand-in) and how to reach it. Credentials never live here."""

    name: str
    provider: Literal["lab", "hyperv"]
    address: str
    storage_root: str
    share: str
    # Where this machine mounts ``share`` (e.g. /mnt/imagestore), so `invoke publish` can copy images onto
    # it as plain files; not needed for the lab, whose share is a folder of its own.
    share_mount: str | None = None
    max_concurrent: int = Field(default=2, ge=1, le=32)
    # Free space a reimage leaves on the host's storage beyond what it writes (preflight refuses otherwise).
    reserve_gb: float = Field(default=1.0, ge=0)
    port: int = Field(default=5986, ge=1, le=65535)
    auth: Literal["negotiate", "kerberos", "ntlm", "credssp", "certificate"] = "negotiate"
    ssl: bool = True
    # With ssl: false, every WinRM message must be encrypted by the authentication layer: say "always".
    message_encryption: Literal["auto", "always", "never"] = "auto"
    cert_validation: bool | str = True
    switch: str = "Instruments"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, field="name")

    @field_validator("switch")
    @classmethod
    def _switch(cls, v: str) -> str:
        return check_windows_name(v, field="switch")

    @field_validator("storage_root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_windows_path(v, field="storage_root")

    @field_validator("share")
    @classmethod
    def _share(cls, v: str) -> str:
        check_windows_path(v, field="share")
        if not v.startswith("\\\\"):
            raise ValueError(r"the share must be a UNC path like \\fileserver\images")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:]+\]", v):
            raise ValueError("not a host name or address")
        return v


class Group(_Model):
    """A release group: instruments deployed together (the January and the August group)."""

    name: str
    description: str = ""
    release: str  # a label (current, qa, ...) or a release id

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, field="name")


class Instrument(_Model):
    """One instrument PC: a VM on a host, its disks, its desired release and its settings variables."""

    name: str
    vm: str
    host: str
    group: str
    release: str | None = None  # a label or a release id; None: the group's
    legacy_control_system: bool = False
    # A throwaway instrument `invoke acceptance` may create and remove (its VM and generations; never its
    # Var and Data disks): only one marked so is ever given to it.
    scratch: bool = False
    memory_mb: int = Field(default=8192, ge=1024)
    cpus: int = Field(default=4, ge=1, le=64)
    disks: Disks
    variables: dict[str, Any] = Field(default_factory=dict)
    rescue_exclude: tuple[str, ...] = ()
    adopt: AdoptSpec = Field(default_factory=AdoptSpec)
    identity: IdentitySpec = Field(default_factory=IdentitySpec)
    # Which guest services read which settings (a path of the Settings volume, or a folder ending in /):
    # `invoke apply-settings` restarts only the services of the files it changes.
    settings_services: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    source: str = ""  # the file it was read from (filled by the loader)

    @field_validator("name", "vm", "host", "group")
    @classmethod
    def _names(cls, v: str, info: Any) -> str:
        return check_name(v, field=info.field_name)

    @field_validator("vm")
    @classmethod
    def _computer_name(cls, v: str) -> str:
        import re

        # the VM's name is the guest's computer name (its answer file): a NetBIOS name
        if not re.fullmatch(r"[A-Za-z0-9-]{1,15}", v) or v.isdigit():
            raise ValueError("the VM name is also the guest's computer name: at most 15 letters, digits or "
                             "hyphens, not only digits")
        return v

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise ValueError(f"variable name {key!r} is not an identifier")
        return v

    @field_validator("settings_services")
    @classmethod
    def _settings_services(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return check_settings_services(v)

    def services_reading(self, paths: list[str]) -> tuple[list[str], list[str]]:
        """The services that read any of ``paths`` (settings relpaths), and the paths no service is named for."""
        return services_reading(self.settings_services, paths)

    def desired(self, groups: dict[str, Group]) -> str:
        return self.release or groups[self.group].release


class Inventory(_Model):
    root: Path
    hosts: dict[str, Host]
    groups: dict[str, Group]
    instruments: dict[str, Instrument]
    settings_repo: Path | None = None

    def instrument(self, name: str) -> Instrument:
        """Look up by instrument name (ZOOM) or VM name (NDXZOOM), case-insensitively."""
        key = name.upper()
        for inst in self.instruments.values():
            if inst.name.upper() == key or inst.vm.upper() == key:
                return inst
        raise InputError(
            f"no instrument named {name!r} in the inventory", file=str(self.root / FLEET_DIR),
            fix=f"use one of: {', '.join(sorted(self.instruments))}")

    def host_of(self, inst: Instrument) -> Host:
        return self.hosts[inst.host]

    def select(self, *, names: list[str] | None = None, group: str | None = None) -> list[Instrument]:
        if group is not None and group not in self.groups:
            raise InputError(f"unknown group {group!r}", field="--group",
                             fix=f"use one of: {', '.join(sorted(self.groups))}")
        chosen = [self.instrument(n) for n in names] if names else list(self.instruments.values())
        if group is not None:
            chosen = [i for i in chosen if i.group == group]
        return sorted(chosen, key=lambda i: i.name)


# --- loading -----------------------------------------------------------------------------------------


def _read_yaml(path: Path, problems: list[InputError]) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        if doc is None:  # an empty (or comment-only) file would silently mean "nothing": say so
            problems.append(InputError("file is empty", file=str(path),
                                       fix="restore it from git (`git checkout -- <file>`) or remove it"))
        return doc
    except FileNotFoundError:
        problems.append(InputError("file is missing", file=str(path), fix="create it (see docs/inventory.md)"))
    except yaml.YAMLError as exc:
        problems.append(InputError(f"not valid YAML: {exc}", file=str(path), fix="correct the YAML syntax"))
    return None


_FIXES = {
    "extra_forbidden": "remove the key or correct its spelling",
    "missing": "add the field",
    "literal_error": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write text (quote it if YAML reads it as something else)",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "less_than_equal": "use a smaller number",
    "dict_type": "write a mapping of key: value lines",
}


def _pydantic_problems(exc: ValidationError, file: Path, prefix: str = "") -> list[InputError]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(err["type"], "correct the value")
        orig = (err.get("ctx") or {}).get("error")
        if isinstance(orig, InputError):
            msg, fix = orig.reason, orig.fix or fix
        if err["type"] == "literal_error":
            fix = f"use one of the allowed values ({msg.removeprefix('Input should be ')})"
        value = err.get("input") if err["type"] not in ("missing",) else None
        if isinstance(value, dict):
            value = None
        out.append(InputError(msg, file=str(file), field=field, value=value, fix=fix))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _mapping(doc: Any, key: str, path: Path, problems: list[InputError]) -> dict[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
        problems.append(InputError(f"expected a mapping under '{key}:'", file=str(path), field=key,
                                   fix=f"write '{key}:' followed by one entry per name"))
        return {}
    return doc[key]


def _load_named(path: Path, key: str, model: type[_Model], problems: list[InputError]) -> dict[str, Any]:
    """Read a file of named entries (``hosts:`` or ``groups:``) into models, collecting every problem."""
    out: dict[str, Any] = {}
    for name, body in _mapping(_read_yaml(path, problems), key, path, problems).items():
        try:
            out[str(name)] = model(name=str(name), **(body or {}))
        except ValidationError as exc:
            problems += _pydantic_problems(exc, path, f"{key}.{name}.")
        except TypeError:
            problems.append(InputError("expected a mapping", file=str(path), field=f"{key}.{name}",
                                       fix="give its fields as key: value lines"))
    return out


def _cut_short(root: Path) -> list[InputError]:
    """The shared inventory files (hosts, groups, defaults: read for every instrument) that are the beginning
    of their committed version, cut inside a list or mapping. A file cut at a line boundary (a full disk, an
    interrupted copy) is still valid YAML that silently lost the end of a list; git knows what it held, so
    such a file is named instead of read as the truth. A deliberate edit that drops whole top-level keys is
    not mistaken for a cut."""
    if not is_repo(root):
        return []
    top = toplevel(root)
    found = []
    root = root.resolve()
    for rel in dirty_paths(top, [str(root)]):
        path = top / rel
        if path.name not in (HOSTS_FILE, GROUPS_FILE, DEFAULTS_FILE) or path.parent != root or not path.is_file():
            continue
        committed = run_git(top, "cat-file", "blob", f"HEAD:{rel}", check=False)
        now = path.read_bytes()
        rest = committed[len(now):]
        if committed.startswith(now) and rest[:1] in (b" ", b"\t", b"-") and now.endswith(b"\n"):
            found.append(InputError(
                f"this file is the first {len(now)} of the {len(committed)} bytes it has in git and nothing else: "
                "it looks cut off", file=str(path),
                fix=f"restore it with `git checkout -- {rel}`, or commit the change if you removed its end on purpose"))
    return found


def load_inventory(root: Path) -> Inventory:
    """Read and validate the whole inventory; raise ValidationFailed listing every problem found."""
    root = Path(root)
    problems: list[InputError] = []

    hosts_path, groups_path = root / HOSTS_FILE, root / GROUPS_FILE
    hosts = _load_named(hosts_path, "hosts", Host, problems)
    groups = _load_named(groups_path, "groups", Group, problems)

    defaults_path = root / DEFAULTS_FILE
    defaults = _read_yaml(defaults_path, problems) if defaults_path.exists() else {}
    defaults = defaults or {}
    if not isinstance(defaults, dict):
        problems.append(InputError("expected a mapping", file=str(defaults_path), fix="write key: value lines"))
        defaults = {}
    settings_repo = defaults.pop("settings_repo", None)

    instruments: dict[str, Instrument] = {}
    seen_vm: dict[str, str] = {}
    fleet = root / FLEET_DIR
    files = sorted(fleet.glob("*.yaml")) if fleet.is_dir() else []
    if not files:
        problems.append(InputError("no instrument files found", file=str(fleet),
                                   fix="add one <NAME>.yaml per instrument"))
    known = {HOSTS_FILE, GROUPS_FILE, DEFAULTS_FILE}
    for extra in sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")
                        and p.name not in known):
        problems.append(InputError("this file is not read: the inventory is hosts.yaml, groups.yaml, defaults.yaml "
                                   f"and {FLEET_DIR}/<NAME>.yaml", file=str(extra),
                                   fix="move an instrument into the fleet folder, or remove the file"))
    if fleet.is_dir():
        for extra in sorted(p for p in fleet.iterdir() if p.is_file() and p.suffix != ".yaml"
                            and not p.name.startswith(".")):
            problems.append(InputError("this file is not read: only <NAME>.yaml files are instruments",
                                       file=str(extra), fix="rename it to <NAME>.yaml or remove it"))
    for path in files:
        doc = _read_yaml(path, problems)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(InputError("expected a mapping", file=str(path), fix="write key: value lines"))
            continue
        body = _merge(defaults, doc)
        body.setdefault("vm", f"NDX{body.get('name', '')}")
        try:
            inst = Instrument(source=str(path), **body)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, path)
            continue
        except TypeError as exc:
            problems.append(InputError(str(exc), file=str(path), fix="correct the instrument's fields"))
            continue
        if inst.name != path.stem:
            problems.append(InputError("the file name must equal the instrument name", file=str(path),
                                       field="name", value=inst.name, fix=f"rename the file to {inst.name}.yaml"))
        if inst.host not in hosts:
            problems.append(InputError("unknown host", file=str(path), field="host", value=inst.host,
                                       fix=f"use a host from {hosts_path.name}: {', '.join(sorted(hosts))}"))
        if inst.group not in groups:
            problems.append(InputError("unknown group", file=str(path), field="group", value=inst.group,
                                       fix=f"use a group from {groups_path.name}: {', '.join(sorted(groups))}"))
        vm_key = inst.vm.upper()
        if vm_key in seen_vm:
            problems.append(InputError(f"duplicate VM name, also used by {seen_vm[vm_key]}", file=str(path),
                                       field="vm", value=inst.vm, fix="give every instrument its own VM name"))
        seen_vm[vm_key] = path.name
        labels: dict[str, str] = {}
        links: dict[str, str] = {}
        for role, spec in inst.disks.by_role().items():
            lk = spec.label.upper()
            if lk in labels:
                problems.append(InputError(f"duplicate volume label, also used by disk '{labels[lk]}'",
                                           file=str(path), field=f"disks.{role}.label", value=spec.label,
                                           fix="give each disk of an instrument its own label"))
            labels[lk] = role
            lnk = spec.link.upper().rstrip("\\")
            if lnk in links:
                problems.append(InputError(f"duplicate link target, also used by disk '{links[lnk]}'",
                                           file=str(path), field=f"disks.{role}.link", value=spec.link,
                                           fix="link each disk to its own folder"))
            links[lnk] = role
        instruments[inst.name] = inst

    problems += _cut_short(root)
    if problems:
        raise ValidationFailed(problems)
    repo = (root / settings_repo).resolve() if settings_repo else None
    return Inventory(root=root, hosts=hosts, groups=groups, instruments=instruments, settings_repo=repo)
