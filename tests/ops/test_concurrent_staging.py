"""Two operators staging one image at once, as two processes: both end well, the image is staged once,
complete and verified, and nothing half-made is left (issue 13, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imaging.core.config import Paths
from imaging.core.hashing import tree_manifest
from imaging.model import layout
from imaging.ops import publish as publishing
from imaging.ops import stage as staging
from imaging.ops.context import Context

ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_staging_one_image_stage_it_once_and_completely(project: Path) -> None:
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (300, 300)
    zoom = ctx.inventory.instrument("ZOOM")
    publishing.publish(ctx, "2026C3.1", zoom.host)
    ctx.close()
    exe = Path(sys.executable).with_name("invoke")
    cmd = [str(exe), "--search-root", str(ROOT), "stage", "--release=2026C3.1", "--instruments=ZOOM"]
    env = {**os.environ, "IMAGING_ROOT": str(project), "COLUMNS": "200"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    text = "".join(out for out, _ in outs)
    assert text.count("copied, verified") == 2 and text.count("already staged") == 2  # each image once
    ctx = Context.load(Paths.from_env(project))
    try:
        host = ctx.inventory.host_of(zoom)
        assert staging.not_staged(ctx, "2026C3.1", zoom.host) == []
        for art in staging.artifacts_of(ctx, "2026C3.1", zoom.host):
            staged = ctx.providers.lab.path(zoom.host, layout.image_path(host, art.name, art.sha256))
            cache = ctx.paths.lab / "unpacked" / art.sha256 / "content"
            assert tree_manifest(staged / "content") == tree_manifest(cache)  # complete: every file
        assert not list(ctx.paths.lab.rglob("*.partial"))
    finally:
        ctx.close()


def test_a_byte_flipped_in_a_staged_image_is_found_and_staging_repairs_it(project: Path) -> None:
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (60, 40)
    try:
        zoom = ctx.inventory.instrument("ZOOM")
        publishing.publish(ctx, "2026C3.1", zoom.host)
        staging.stage_for(ctx, "2026C3.1", [zoom])
        _, apps = staging.artifacts_of(ctx, "2026C3.1", zoom.host)
        image = ctx.providers.lab.path(zoom.host, layout.image_path(ctx.inventory.host_of(zoom), apps.name,
                                                                   apps.sha256)) / "image.vhdx"
        data = bytearray(image.read_bytes())
        data[len(data) // 3] ^= 0x01
        image.chmod(0o644)
        image.write_bytes(bytes(data))
        assert staging.not_staged(ctx, "2026C3.1", zoom.host) == [apps.name]  # not "already staged"
        again = {s.result["name"]: s.result["changed"] for s in staging.stage_for(ctx, "2026C3.1", [zoom])}
        assert again[apps.name] is True and staging.not_staged(ctx, "2026C3.1", zoom.host) == []
    finally:
        ctx.close()
