"""Images onto hosts: the release's artifacts from the store (on the lab, made on first use), put on each
host's image share, and pulled from the share to the host, verified. Staging once per host, before a
shutdown, is what makes a reimage fast.
"""

from __future__ import annotations

import fcntl
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import ArtifactError, ImagingError
from imaging.images import build, samples
from imaging.model import layout
from imaging.model.inventory import Instrument
from imaging.model.plan import Artifact
from imaging.model.releases import ReleaseDefinition
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.ops.facts import desired_release

_SAMPLES = threading.Lock()  # one process builds a missing sample once, whatever its threads ask


@contextmanager
def _sample_lock(ctx: Context) -> Iterator[None]:
    """Across processes: one builds a missing sample while the others wait, then find it stored."""
    ctx.paths.locks.mkdir(parents=True, exist_ok=True)
    with open(ctx.paths.locks / "samples.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _build_sample(ctx: Context, release: str, kind: str) -> None:
    """Build a release's missing image from the built-in sample tree with the project's own builder."""
    rel = ctx.releases[release]
    if kind == "os-template":  # built from the tree of a demo release that uses it
        rel = next(r for r in ctx.releases.values() if r.samples and r.os_template.name == rel.os_template.name)
    os_files, apps_files = ctx.sample_sizes
    ctx.paths.tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sample-", dir=ctx.paths.tmp) as tmp:
        if kind == "os-template":
            tree = samples.write_tree(samples.os_tree_files(rel.os_template.name, os_files), Path(tmp) / "tree")
            build.build_lab_template(store=ctx.store, records=ctx.builds, version=rel.os_template.name, base=tree,
                                     workdir=ctx.paths.tmp)
        else:
            tree = samples.write_tree(samples.apps_tree_files(rel.apps.name, rel.apps.version, apps_files),
                                      Path(tmp) / "tree")
            build.build_apps(store=ctx.store, records=ctx.builds, releases=ctx.releases, release=release,
                             source=tree, workdir=ctx.paths.tmp)


UNBUILT = "0" * 64  # the sha256 a dry run shows for a sample image that is built on first use


def has_sample(ctx: Context, name: str, kind: str, rel: ReleaseDefinition) -> bool:
    """Whether a sample tree stands for this image: the release is a demo release (``samples: true``), or
    (an OS template) a demo release uses the same template."""
    if kind == "apps":
        return rel.samples
    return any(r.samples and r.os_template.name == name for r in ctx.releases.values())


def artifacts_of(ctx: Context, release: str, host: str, *, build_samples: bool = True
                 ) -> tuple[Artifact, Artifact]:
    """The OS template and Apps image of a release, from the store; where the host's provider allows sample
    images (the lab), built on first use from the sample trees (with ``build_samples=False``, for dry runs,
    a missing sample is described with the sha256 ``UNBUILT`` and nothing is built)."""
    rel = ctx.releases[release]
    out = []
    for ref, kind in ((rel.os_template, "os-template"), (rel.apps, "apps")):
        if not ctx.store.exists(ref.name):
            if not (ctx.providers.sample_images(host) and has_sample(ctx, ref.name, kind, rel)):
                raise ArtifactError(f"artifact {ref.name} of release {release} is not in the store; build it with "
                                    f"`invoke build-{'template' if kind == 'os-template' else 'apps'}`")
            if not build_samples:
                out.append(Artifact(name=ref.name, sha256=UNBUILT, size=0))
                continue
            with _SAMPLES, _sample_lock(ctx):
                if not ctx.store.exists(ref.name):  # another thread or process may have built it meanwhile
                    _build_sample(ctx, release, kind)
        man = ctx.store.get(ref.name)
        if ref.sha256 and ref.sha256 != man.sha256:
            raise ArtifactError(f"release {release} pins {ref.name} to sha256 {ref.sha256}, the store holds "
                                f"{man.sha256}; the artifact was rebuilt or replaced")
        out.append(Artifact(name=man.name, sha256=man.sha256, size=man.size, suffix=man.suffix or ".vhdx"))
    return out[0], out[1]


def stage_steps(ctx: Context, release: str, host_name: str) -> list[Step]:
    """The steps that put a release's images on one host, each verified on arrival."""
    host = ctx.inventory.hosts[host_name]
    steps = []
    for art in artifacts_of(ctx, release, host_name):
        steps.append(Step("stage_artifact", host_name, {
            "name": art.name, "sha256": art.sha256,
            "share_path": layout.share_path(host, art.name, art.sha256, art.suffix),
            "dest_path": layout.image_path(host, art.name, art.sha256)},
            f"stage {art.name} on {host_name} (pull from the share, verify sha256, make read-only)"))
    return steps


def not_staged(ctx: Context, release: str, host_name: str) -> list[str] | None:
    """The release's artifacts missing on a host; None when that cannot be seen without a host call."""
    host = ctx.inventory.hosts[host_name]
    missing = []
    for art in artifacts_of(ctx, release, host_name, build_samples=False):
        if art.sha256 == UNBUILT:
            missing.append(art.name)
            continue
        staged = ctx.providers.staged(host_name, layout.image_path(host, art.name, art.sha256), art.sha256)
        if staged is None:
            return None
        if not staged:
            missing.append(art.name)
    return missing


def unpublished(ctx: Context, release: str, host_name: str) -> list[str]:
    """The release's images missing from the host's share, where this machine can see the share (else [])."""
    host = ctx.inventory.hosts[host_name]
    missing = []
    for art in artifacts_of(ctx, release, host_name, build_samples=False):
        share_file = layout.share_path(host, art.name, art.sha256, art.suffix)
        folder = ctx.providers.share_folder(host_name, share_file)
        if folder is not None and (art.sha256 == UNBUILT or not (folder / layout.staged_name(
                art.name, art.sha256, art.suffix)).is_file()):
            missing.append(art.name)
    return missing


@dataclass(frozen=True)
class StageEvent:
    """Progress of moving an image: ``phase`` is "publish" (bytes from the store onto a host's share, with
    done/total) or "stage" (the host pulls and verifies; ``result`` is set when the step ended)."""

    host: str
    artifact: str
    phase: str
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None


StageProgress = Callable[[StageEvent], None]


def stage(ctx: Context, release: str, host_name: str, *,
          progress: StageProgress | None = None) -> list[dict[str, Any]]:
    """Stage a release's images on one host: the host pulls them from the image share (`invoke publish` puts
    them there), once, verified, resumable (a half-done copy is finished or redone; a staged image is left
    alone). Returns one result per artifact with ``name``, ``changed`` and ``bytes`` copied."""
    out = []
    for s in stage_steps(ctx, release, host_name):
        name = str(s.inputs["name"])
        if progress is not None:
            progress(StageEvent(host_name, name, "stage"))
        res = {"name": name, **ctx.providers.run(s)}
        if progress is not None:
            progress(StageEvent(host_name, name, "stage", result=res))
        out.append(res)
    return out


@dataclass(frozen=True)
class Staged:
    host: str
    release: str
    result: dict[str, Any]  # name, changed, bytes


PULLS = 4  # hosts pulling from the share at once (as a deploy's --pulls)


def stage_for(ctx: Context, release: str, insts: Iterable[Instrument], *,
              progress: StageProgress | None = None, pulls: int = PULLS) -> list[Staged]:
    """Stage ``release`` (an id or a label, resolved per instrument like every other release choice: revoked
    releases are refused) on each host of the instruments, once per host and release; up to ``pulls``
    hosts pull at once, as real hosts do. The first failure is raised once the others have finished."""
    pairs = sorted({(desired_release(ctx, i, release), i.host) for i in insts})
    for rid, host in pairs:
        missing = unpublished(ctx, rid, host)
        if missing:
            raise ImagingError(f"release {rid} is not published for {host} ({', '.join(missing)} not on "
                               f"{ctx.inventory.hosts[host].share}); run `invoke publish --release={rid}` first; "
                               "nothing was staged")
    for rid in sorted({rid for rid, _ in pairs}):  # build a missing sample before threads start
        artifacts_of(ctx, rid, pairs[0][1])

    def one(pair: tuple[str, str]) -> list[Staged]:
        rid, host = pair
        return [Staged(host, rid, res) for res in stage(ctx, rid, host, progress=progress)]

    with ThreadPoolExecutor(max_workers=max(1, min(pulls, len(pairs))), thread_name_prefix="stage") as pool:
        futures = [pool.submit(one, pair) for pair in pairs]
    out = []
    for f in futures:
        out += f.result()
    return out
