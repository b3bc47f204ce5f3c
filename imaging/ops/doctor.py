"""`invoke doctor`: a read-only check of each host before anything runs there. One step per host
(``doctor_host``: endpoint, credentials, Hyper-V module, storage root and free space, the image share seen
from the host, WinRM quotas, which VMs exist), then what only the tool knows: VMs the journal says run a
release but that are gone, and PowerShell Direct with the guest credential on one running instrument."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imaging.core.errors import ArtifactError, ImagingError
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import desired_release, running_release

GB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _need_bytes(ctx: Context, host: str) -> int:
    """What the host must hold free: the desired releases' images of its instruments (their sizes from the
    store; an image not built yet counts nothing) and the host's reserve."""
    names: set[str] = set()
    for inst in (i for i in ctx.inventory.instruments.values() if i.host == host):
        try:
            rel = ctx.releases[desired_release(ctx, inst)]
        except ImagingError:
            continue
        names |= {rel.os_template.name, rel.apps.name}
    sizes = 0
    for name in names:
        try:
            sizes += ctx.store.get(name).size if ctx.store.exists(name) else 0
        except ArtifactError:
            continue
    return sizes + int(ctx.inventory.hosts[host].reserve_gb * GB)


def doctor(ctx: Context, hosts: list[str] | None = None) -> list[Check]:
    """Every check of every chosen host (default: all); changes nothing."""
    chosen = hosts or sorted(ctx.inventory.hosts)
    for h in chosen:
        if h not in ctx.inventory.hosts:
            raise ImagingError(f"no host named {h} in the inventory (hosts: {', '.join(sorted(ctx.inventory.hosts))})")
    return [c for h in chosen for c in _host(ctx, h)]


def _host(ctx: Context, name: str) -> list[Check]:
    host = ctx.inventory.hosts[name]
    insts = sorted((i for i in ctx.inventory.instruments.values() if i.host == name), key=lambda i: i.name)
    trust = ctx.providers.trust(name)
    try:
        res = ctx.providers.run(Step("doctor_host", name, {
            "storage_root": host.storage_root, "share": host.share, "need_bytes": _need_bytes(ctx, name),
            "max_concurrent": host.max_concurrent, "vms": [i.vm for i in insts]}, f"check host {name} (read only)"))
    except ImagingError as exc:
        return [Check(name, "connection", False, str(exc),
                      "see docs/hyperv.md: the WinRM HTTPS listener (port and firewall), the certificate (its CA "
                      "or thumbprint in hosts.yaml, cert_validation), and the credentials (IMAGING_HYPERV_USER / "
                      "_PASSWORD or the per-host variables)")]
    out = [Check(name, c["name"], bool(c["ok"]), str(c["detail"]) + (f"; TLS trust: {trust}" if trust and
                                                                       c["name"] == "endpoint" else ""),
                 str(c.get("fix", ""))) for c in res["checks"]]
    powers: dict[str, str] = res["vms"]
    missing = [f"{i.vm} ({i.name} runs {r} by the journal)" for i in insts
               if (r := running_release(ctx, i)) and powers.get(i.vm, "Absent") == "Absent"]
    out.append(Check(name, "vms", not missing,
                     f"{sum(p != 'Absent' for p in powers.values())} of {len(insts)} instrument VMs exist"
                     + (f"; missing: {', '.join(missing)}" if missing else ""),
                     "" if not missing else "see `invoke status`; a VM deleted by hand comes back with `invoke reimage "
                     "--instrument=<name> --force` (its Var and Data disks are kept on the host)"))
    running = next((i for i in insts if powers.get(i.vm) == "Running"), None)
    if running is None:
        out.append(Check(name, "powershell direct", True, "no instrument VM runs on this host: nothing to try"))
        return out
    try:
        seen = ctx.providers.run(Step("wait_guest", name, {"vm": running.vm, "timeout_s": 30},
                                      f"answer over PowerShell Direct ({running.vm})"))
        out.append(Check(name, "powershell direct", True,
                         f"{running.vm} answered with the guest credential" +
                         (f" as {seen['guest_name']}" if seen.get("guest_name") else "")))
    except ImagingError as exc:
        out.append(Check(name, "powershell direct", False, f"{running.vm}: {exc}",
                         "set IMAGING_GUEST_USER / IMAGING_GUEST_PASSWORD to a local administrator of the instrument "
                         "PCs (every new OS disk's answer file creates it); the host needs Windows Server 2016 or "
                         "later and the guest Windows 10 / Server 2016 or later"))
    return out
