"""Every "ok" is checked against content: the check after a reimage compares the Apps volume with the image's
manifest (sizes always, every byte with --verify-content), so an instrument never reports done on a damaged
parent (issue 13, item 2)."""

from __future__ import annotations

from pathlib import Path

from imaging.core.config import Paths
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from imaging.ops.context import Context


def _ctx(project: Path) -> Context:
    ctx = Context.load(Paths.from_env(project))
    ctx.sample_sizes = (60, 40)
    return ctx


def _parent_file(ctx: Context, release: str) -> Path:
    _, apps = staging.artifacts_of(ctx, release, "HVHOST04")
    files = sorted((ctx.paths.lab / "unpacked" / apps.sha256 / "content" / "server" / "bin").iterdir())
    return files[0]


def test_a_damaged_parent_fails_the_check_and_the_reimage_is_undone(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    assert reimaging.reimage(ctx, "WISH", "2026C3.1").ok  # stages and unpacks 2026C3.1's Apps on the lab
    victim = _parent_file(ctx, "2026C3.1")
    with open(victim, "ab") as fh:  # the parent grows a byte behind the tool's back
        fh.write(b"!")
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.1")
    assert not out.ok and out.failed_step == "health_check" and out.restored
    assert "does not match its image" in (out.error or "")
    assert facts.running_release(ctx, ctx.inventory.instrument("ZOOM")) == "2026C3.0"
    ctx.close()


def test_a_flipped_byte_is_found_with_verify_content(project: Path) -> None:
    ctx = _ctx(project)
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok
    assert reimaging.reimage(ctx, "WISH", "2026C3.1").ok
    victim = _parent_file(ctx, "2026C3.1")
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    with open(victim, "r+b") as fh:  # same size, another byte: only the content check can see it
        fh.write(bytes(data))
    out = reimaging.reimage(ctx, "ZOOM", "2026C3.1", verify_content=True)
    assert not out.ok and out.failed_step == "health_check" and "content differs" in (out.error or "")
    ctx.close()
