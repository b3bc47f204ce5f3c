"""The fleet as an Ansible inventory (`invoke inventory --format=ansible`), so a facility that drives its
machines with Ansible keeps one inventory: this repository's.

Groups: ``hyperv_hosts`` (the Hyper-V servers), ``instruments`` (every instrument VM, under its VM name,
which is its computer name), one ``group_<name>`` per deploy group, one ``on_<host>`` per Hyper-V host (the
instruments it runs), one ``role_<technique>`` per instrument technique, and ``legacy_control_system``.
Every machine is reached with ``ansible_connection: psrp`` (PowerShell remoting over WinRM, as imaging
itself reaches the hosts); no credential is ever written (Ansible takes them from its vault or prompt).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from imaging.core.errors import InputError
from imaging.model.inventory import Host, Instrument, Inventory

_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what Ansible accepts as a group name unchanged


def slug(text: str) -> str:
    """A group-name part: lower case, runs of anything else than letters and digits become one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "none"


def _host_vars(host: Host) -> dict[str, Any]:
    return {"ansible_host": host.address, "ansible_connection": "psrp", "ansible_port": host.port,
            "ansible_psrp_protocol": "https" if host.ssl else "http", "ansible_psrp_auth": host.auth,
            "ansible_psrp_cert_validation": "validate" if host.cert_validation is not False else "ignore",
            "imaging_provider": host.provider, "imaging_storage_root": host.storage_root,
            "imaging_max_concurrent": host.max_concurrent}


def _vm_vars(inst: Instrument) -> dict[str, Any]:
    domain = inst.identity.domain
    return {"ansible_host": f"{inst.vm}.{domain}" if domain else inst.vm, "ansible_connection": "psrp",
            "ansible_port": 5986, "ansible_psrp_protocol": "https", "ansible_psrp_cert_validation": "validate",
            "imaging_instrument": inst.name, "imaging_hyperv_host": inst.host, "imaging_group": inst.group,
            "imaging_release": inst.release or "(the group's)",
            "imaging_legacy_control_system": inst.legacy_control_system}


def ansible_inventory(inv: Inventory) -> dict[str, Any]:
    """The inventory as Ansible's YAML inventory structure (validated: every group name is one Ansible keeps)."""
    insts = sorted(inv.instruments.values(), key=lambda i: i.name)
    groups: dict[str, dict[str, Any]] = {
        "hyperv_hosts": {"hosts": {h.name: _host_vars(h) for h in sorted(inv.hosts.values(), key=lambda h: h.name)}},
        "instruments": {"hosts": {i.vm: _vm_vars(i) for i in insts}},
    }
    for name in sorted(inv.groups):
        groups[f"group_{slug(name)}"] = {"hosts": {i.vm: None for i in insts if i.group == name}}
    for host in sorted(inv.hosts):
        groups[f"on_{slug(host)}"] = {"hosts": {i.vm: None for i in insts if i.host == host}}
    for tech in sorted({str(i.variables.get("technique", "")) for i in insts if i.variables.get("technique")}):
        groups[f"role_{slug(tech)}"] = {"hosts": {i.vm: None for i in insts if i.variables.get("technique") == tech}}
    groups["legacy_control_system"] = {"hosts": {i.vm: None for i in insts if i.legacy_control_system}}
    problems = [g for g in groups if not _GROUP.fullmatch(g)]
    clash = sorted(set(inv.hosts) & {i.vm for i in insts})
    if problems or clash:
        raise InputError("the inventory cannot be written for Ansible: "
                         + "; ".join([f"group name {g!r} is not valid" for g in problems]
                                     + [f"{c} is both a Hyper-V host and an instrument VM" for c in clash]),
                         file="instruments/", fix="rename them (Ansible group names are letters, digits and _)")
    return {"all": {"children": {k: v if v["hosts"] else {} for k, v in groups.items()}}}


def ansible_yaml(inv: Inventory) -> str:
    head = ("# The fleet as an Ansible inventory, written by `invoke inventory --format=ansible` from instruments/.\n"
            "# Do not edit: change instruments/ and write it again. No credentials are in it.\n")
    return head + yaml.safe_dump(ansible_inventory(inv), sort_keys=False, default_flow_style=False)
