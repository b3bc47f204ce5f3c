"""Authoring and publishing a release: bad input is refused with the file, field and fix, and leaves nothing
half-made (no release file without its image, no partial copy under a real name)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from imaging.core.config import Paths
from imaging.core.errors import ImagingError, InputError
from imaging.images import samples
from imaging.model.releases import load_release
from imaging.ops import new_release as new_releases
from imaging.ops import publish as publishing
from imaging.ops.context import Context
from imaging.state.store import ArtifactStore


@pytest.fixture
def ctx(project: Path):  # noqa: ANN201
    c = Context.load(Paths.from_env(project))
    c.sample_sizes = (40, 30)
    yield c
    c.close()


def _tree(root: Path, version: str) -> Path:
    return samples.write_tree(samples.apps_tree_files("apps-x", version, 20), root)


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"release_id": "2026c3.3"}, "--id", "not a release id"),
    ({"release_id": "2026C3.1"}, "--id", "already exists"),
    ({"release_id": "2026C3.3", "parent": "2026C9.0"}, "--from", "no such release"),
    ({"release_id": "2026C2.0", "parent": "2026C3.1"}, "--id", "does not sort after"),
    ({"release_id": "2027C1.0"}, "--os-template", "needs an OS template"),
    ({"release_id": "2026C3.3", "settings_version": 9}, "--settings-version", "formats 1 to 5"),
    ({"release_id": "2026C3.3", "os_template": "Win11 2027"}, "--os-template", "not an OS template version"),
])
def test_new_release_refuses_bad_input_and_writes_nothing(ctx: Context, kwargs: dict, field: str,
                                                          words: str) -> None:
    before = sorted(p.name for p in ctx.paths.releases.iterdir())
    with pytest.raises(InputError) as err:
        new_releases.new_release(ctx, **kwargs)
    assert err.value.field == field and words in str(err.value) and err.value.fix
    assert sorted(p.name for p in ctx.paths.releases.iterdir()) == before


def test_a_patch_release_inherits_from_the_release_it_patches(ctx: Context) -> None:
    done = new_releases.new_release(ctx, "2026C3.2")
    assert done.parent == "2026C3.1" and done.path.is_file() and done.commit and done.commit.committed
    parent = ctx.releases["2026C3.1"]
    assert (done.release.os_template.name, done.release.settings_version) == \
        (parent.os_template.name, parent.settings_version)
    assert done.release.apps.name == "apps-2026C3.2" and not done.release.samples


def test_a_failed_build_leaves_no_release_file(ctx: Context, tmp_path: Path) -> None:
    src = _tree(tmp_path / "apps", "2026C3.9")  # the version file does not say 2026C3.3
    with pytest.raises(InputError, match="version file does not match"):
        new_releases.new_release(ctx, "2026C3.3", apps_source=src)
    assert not (ctx.paths.releases / "2026C3.3.yaml").exists()
    (src / "server" / "bin" / "NUL.dll").write_bytes(b"x")  # a name Windows cannot hold
    (src / "version.txt").write_text("2026C3.3\n")
    with pytest.raises(InputError, match="device name"):
        new_releases.new_release(ctx, "2026C3.3", apps_source=src)
    assert not (ctx.paths.releases / "2026C3.3.yaml").exists()
    assert not ArtifactStore(ctx.paths.store).exists("apps-2026C3.3")
    assert not list(ctx.paths.releases.glob("*.partial"))


def test_publishing_to_a_full_share_names_the_share_and_the_fix(ctx: Context,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ArtifactStore, "stage", full)
    with pytest.raises(ImagingError) as err:
        publishing.publish(ctx, "2026C3.1", "HVHOST01")
    text = str(err.value)
    assert "the share is full" in text and "imagestore" in text and "invoke publish" in text


def test_a_corrupt_copy_on_the_share_is_refused_by_the_host_and_publishing_again_repairs_it(ctx: Context) -> None:
    from imaging.ops import stage as staging

    zoom = ctx.inventory.instrument("ZOOM")
    [os_pub, apps_pub] = publishing.publish(ctx, "2026C3.1", zoom.host)
    data = bytearray(apps_pub.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    apps_pub.path.chmod(0o644)
    apps_pub.path.write_bytes(bytes(data))
    with pytest.raises(ImagingError, match="corrupt, publish it again"):
        staging.stage_for(ctx, "2026C3.1", [zoom])
    assert not list(ctx.paths.lab.rglob("*.partial"))  # the failed pull left nothing half-made
    again = publishing.publish(ctx, "2026C3.1", zoom.host)
    assert [p.copied for p in again] == [False, True]  # the bad copy is replaced, the good one left alone
    staged = {r.result["name"]: r.result["changed"] for r in staging.stage_for(ctx, "2026C3.1", [zoom])}
    assert staged == {"win11-ltsc-2026.1": False, "apps-2026C3.1": True}


def test_a_release_records_the_commit_its_settings_templates_are_read_at(ctx: Context) -> None:
    from conftest import git

    head = git(ctx.paths.root, "rev-parse", "HEAD").strip()
    done = new_releases.new_release(ctx, "2026C3.2")
    assert done.release.settings_templates is not None
    assert (done.release.settings_templates.ref, done.release.settings_templates.dir) == (head, "templates/settings")
    assert load_release(done.path).templates == done.release.settings_templates  # written to the file


def test_a_release_at_an_older_format_names_that_formats_templates(ctx: Context) -> None:
    # from a release at format 4: inherits the frozen set it names; a new cycle at format 3: the frozen v3 set
    four = new_releases.plan_release(ctx, "2026C1.1")[0]
    assert four.settings_version == 4 and four.templates.dir == "templates/settings-history/v4"
    three = new_releases.plan_release(ctx, "2026C2.0", os_template="win11-ltsc-2026.1", settings_version=3)[0]
    assert three.templates.dir == "templates/settings-history/v3"
    with pytest.raises(InputError, match="no settings templates at format 2") as err:
        new_releases.plan_release(ctx, "2026C2.0", os_template="win11-ltsc-2026.1", settings_version=2)
    assert err.value.field == "--settings-version" and err.value.fix


def test_new_release_refuses_uncommitted_templates_and_writes_nothing(ctx: Context) -> None:
    before = sorted(p.name for p in ctx.paths.releases.iterdir())
    (ctx.paths.templates / "settings" / "globals.txt.j2").write_text("changed, not committed\n")
    with pytest.raises(InputError, match="uncommitted changes") as err:
        new_releases.new_release(ctx, "2026C3.2")
    assert "commit them first" in err.value.fix
    assert sorted(p.name for p in ctx.paths.releases.iterdir()) == before
