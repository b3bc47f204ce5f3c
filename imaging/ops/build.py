"""Building images for a release: the Apps disk (here with the image tools, or on a Windows build host),
OS templates (the lab from a base tree, Hyper-V from an ISO), and reading a built image back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import ImagingError
from imaging.images import build, vhdx
from imaging.images.answer_files import TemplateSettings, render_provision, render_unattend
from imaging.images.manifest import ImageManifest
from imaging.model import layout
from imaging.model.inventory import Host
from imaging.model.releases import ReleaseDefinition
from imaging.model.steps import Step
from imaging.ops.context import Context
from imaging.state.builds import BuildRecord


def _release(ctx: Context, release: str) -> ReleaseDefinition:
    if release not in ctx.releases:
        raise ImagingError(f"no release {release}; known: {', '.join(sorted(ctx.releases))}")
    return ctx.releases[release]


def _host(ctx: Context, host: str) -> Host:
    h = ctx.inventory.hosts.get(host)
    if h is None:
        raise ImagingError(f"no host {host} in the inventory; known: {', '.join(sorted(ctx.inventory.hosts))}")
    return h


@dataclass
class AppsBuild:
    """What ``build_apps`` did or would do: ``step`` for a build host, ``source`` for a local build."""

    release: ReleaseDefinition
    host: str | None = None
    step: Step | None = None
    source: Path | None = None
    record: BuildRecord | None = None
    result: build.BuildResult | None = None


def build_apps(ctx: Context, release: str, source: str, *, host: str | None = None, size_gb: int | None = None,
               workdir: Path | None = None, dry_run: bool = False) -> AppsBuild:
    """Build the Apps disk of ``release``: on a build host (New-VHD, Format-Volume, a copy) or here."""
    rel = _release(ctx, release)
    if host:
        h = _host(ctx, host)
        if not size_gb:
            raise ImagingError("--size-gb is required when building on a host")
        step = build.apps_build_step(h, rel, source_path=source, size_gb=int(size_gb))
        if dry_run:
            return AppsBuild(rel, host=host, step=step)
        rec = build.build_apps_on_host(records=ctx.builds, run=ctx.providers.run, host=h, rel=rel,
                                       source_path=source, size_gb=int(size_gb))
        rec = import_from_host(ctx, h, rec, step.inputs["vhd_path"])
        return AppsBuild(rel, host=host, step=step, record=rec)
    src = build.check_apps_source(Path(source), rel)
    if dry_run:
        return AppsBuild(rel, source=src)
    result = build.build_apps(store=ctx.store, records=ctx.builds, releases=ctx.releases, release=release,
                              source=src, workdir=workdir or ctx.paths.tmp,
                              size_bytes=int(size_gb) * 1024 ** 3 if size_gb else None)
    return AppsBuild(rel, source=src, result=result)


def verify_image(ctx: Context, *, release: str | None = None, image: Path | None = None,
                 manifest: Path | None = None, workdir: Path | None = None) -> tuple[str, list[str]]:
    """Read a built image back (without mounting) and compare every file with its manifest; returns what
    was verified and the problems found."""
    scratch = workdir or ctx.paths.tmp
    if image:
        if not manifest:
            raise ImagingError("--image needs --manifest")
        return str(image), vhdx.verify_image(Path(image), ImageManifest.load(Path(manifest)), workdir=scratch)
    if release:
        name = _release(ctx, release).apps.name
        return name, build.verify_stored(store=ctx.store, records=ctx.builds, name=name, workdir=scratch)
    raise ImagingError("give --release, or --image with --manifest")


@dataclass
class TemplateBuild:
    version: str
    host: str | None = None
    step: Step | None = None
    record: BuildRecord | None = None


def build_template(ctx: Context, version: str, *, base: Path | None = None, host: str | None = None,
                   iso: str | None = None, image_index: int = 1, dry_run: bool = False) -> TemplateBuild:
    """A read-only, versioned OS template: on the lab from a base tree, on Hyper-V from an ISO. The
    template's administrator password comes from IMAGING_TEMPLATE_PASSWORD, never from a file."""
    build.check_template_version(version, field="--version")
    if base:
        if dry_run:
            return TemplateBuild(version)
        rec = build.build_lab_template(store=ctx.store, records=ctx.builds, version=version, base=Path(base),
                                       workdir=ctx.paths.tmp)
        return TemplateBuild(version, record=rec)
    if not (host and iso):
        raise ImagingError("give --base (lab) or --host and --iso (hyperv)")
    h = _host(ctx, host)
    settings = TemplateSettings(version=version, admin_password=os.environ.get("IMAGING_TEMPLATE_PASSWORD", ""))
    step = build.template_build_step(h, version, iso_path=iso, image_index=int(image_index),
                                     unattend=render_unattend(settings, templates=ctx.paths.templates),
                                     provision=render_provision(settings, templates=ctx.paths.templates))
    if dry_run:
        return TemplateBuild(version, host=host, step=step)
    rec = build.build_template_on_host(records=ctx.builds, run=ctx.providers.run, step=step)
    return TemplateBuild(version, host=host, step=step,
                         record=import_from_host(ctx, h, rec, step.inputs["vhd_path"]))


def import_from_host(ctx: Context, host: Host, rec: BuildRecord, vhd_path: str) -> BuildRecord:
    """Bring an image built on ``host`` into the store: the host copies it onto its image share (verified),
    this machine takes it from there (verified against the host's Get-FileHash). Until then the release is
    not deployable; running the build again retries (the build itself is not redone)."""
    share_file = layout.share_path(host, rec.name, rec.sha256 or "", ".vhdx")
    ctx.providers.run(Step("export_image", host.name, {"path": vhd_path, "share_path": share_file,
                                                       "sha256": rec.sha256},
                           f"copy {rec.name} from {host.name} onto the image share"))
    folder = ctx.providers.share_folder(host.name, share_file)
    if folder is None:
        raise ImagingError(f"{rec.name} was built on {host.name} and copied to {host.share}, but that share is not "
                           f"mounted here, so it is not in the store yet: mount it, set share_mount for {host.name} "
                           "in hosts.yaml, and run the build again (it is not redone)")
    return build.import_built(store=ctx.store, records=ctx.builds, rec=rec,
                              image=folder / layout.staged_name(rec.name, rec.sha256 or "", ".vhdx"),
                              workdir=ctx.paths.tmp)
