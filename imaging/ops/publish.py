"""Publishing: a release's images from the store onto the image share that hosts pull from.

The copy is a plain file copy to the share (a folder in the lab, the SMB share mounted on this machine
for Hyper-V hosts), never over WinRM; it is hashed as it is written and renamed into place only when the
sha256 matches, resumes a half-done copy, and leaves a complete one alone. `invoke stage` then has each
host pull from its share.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import ImagingError
from imaging.model import layout
from imaging.ops.context import Context
from imaging.ops.facts import desired_release
from imaging.ops.stage import StageEvent, StageProgress, artifacts_of

_SHARES = threading.Lock()  # hosts often share one share: one copy at a time within a process


@dataclass(frozen=True)
class Published:
    release: str
    artifact: str
    share: str      # the UNC path of the share
    path: Path      # where the file is, as this machine sees it
    copied: bool
    bytes: int


def _share_folder(ctx: Context, host_name: str, share_file: str) -> Path:
    folder = ctx.providers.share_folder(host_name, share_file)
    if folder is None:
        host = ctx.inventory.hosts[host_name]
        raise ImagingError(f"host {host_name}'s image share {host.share} is not reachable from this machine: "
                           f"mount it here and set share_mount for {host_name} in hosts.yaml "
                           "(see docs/images.md, Publishing)")
    return folder


def to_share(ctx: Context, host_name: str, name: str, *, progress: StageProgress | None = None
             ) -> tuple[Path, bool]:
    """Copy stored artifact ``name`` onto the host's share; returns where it is and whether it was copied
    (a complete, verified copy is left alone; a partial one is resumed)."""
    host = ctx.inventory.hosts[host_name]
    man = ctx.store.get(name)
    folder = _share_folder(ctx, host_name, layout.share_path(host, man.name, man.sha256, man.suffix or ".vhdx"))
    cb = None
    if progress is not None:
        def cb(done: int, total: int) -> None:
            progress(StageEvent(host_name, name, "publish", done, total))
    with _SHARES:
        target = folder / man.staged_name
        before = (target.stat().st_ino, target.stat().st_mtime_ns) if target.is_file() else None
        try:
            path = ctx.store.stage(name, folder, progress=cb)
            return path, (path.stat().st_ino, path.stat().st_mtime_ns) != before
        except OSError as exc:
            why = "the share is full" if exc.errno == errno.ENOSPC else f"{exc.strerror or exc}"
            raise ImagingError(f"publishing {name} to {host.share} ({folder}) for {host_name} failed: {why}; "
                               f"free {man.size} bytes there (or fix the mount) and run `invoke publish` again: "
                               "a partial copy is resumed") from None


def publish(ctx: Context, release: str, host_name: str, *, progress: StageProgress | None = None
            ) -> list[Published]:
    """Put a release's images on one host's share (once per share: a complete copy is left alone)."""
    host = ctx.inventory.hosts[host_name]
    out = []
    for art in artifacts_of(ctx, release, host_name):
        path, copied = to_share(ctx, host_name, art.name, progress=progress)
        out.append(Published(release, art.name, host.share, path, copied=copied, bytes=art.size if copied else 0))
    return out


def publish_for(ctx: Context, release: str, hosts: Iterable[str], *, progress: StageProgress | None = None
                ) -> list[Published]:
    """Publish ``release`` for each host (hosts that share one share get one copy)."""
    out = []
    done: set[tuple[str, str]] = set()
    for host_name in sorted(set(hosts)):
        share = ctx.inventory.hosts[host_name].share.lower()
        for p in publish(ctx, release, host_name, progress=progress):
            if (share, p.artifact) not in done:
                done.add((share, p.artifact))
                out.append(p)
    return out


def publish_release(ctx: Context, release: str, *, group: str | None = None, instruments: list[str] | None = None,
                    progress: StageProgress | None = None) -> list[Published]:
    """`invoke publish`: the release (an id or a label, resolved like every release choice) onto the shares
    of the hosts of the chosen instruments (default: every host)."""
    insts = ctx.inventory.select(names=instruments or None, group=group)
    by_release: dict[str, set[str]] = {}
    for inst in insts:
        by_release.setdefault(desired_release(ctx, inst, release), set()).add(inst.host)
    out = []
    for rid, hosts in sorted(by_release.items()):
        out += publish_for(ctx, rid, hosts, progress=progress)
    return out
