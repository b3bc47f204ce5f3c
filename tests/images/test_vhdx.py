"""Real VHDX images: built from a tree, read back without mounting, verified, and damage detected.

These run the real Debian tools (qemu-utils, ntfs-3g, wimtools) on small trees.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import sha256_file
from imaging.images import gpt, vhdx
from imaging.images import tools as imagetools

MIB = 1024 * 1024


def _make_tree(root: Path) -> Path:
    rng = random.Random(8)
    (root / "bin" / "lib" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "bin" / "server.dll").write_bytes(rng.randbytes(1 * MIB))
    (root / "bin" / "lib" / "deep" / "config.ini").write_text("[main]\nport = 5064\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "Größe – µSR ✓.txt").write_text("non-ASCII name\n", encoding="utf-8")
    (root / "small.bin").write_bytes(rng.randbytes(700))
    # names wimlib's default capture configuration would silently drop
    (root / "pagefile.sys").write_text("kept\n")
    (root / "Windows" / "CSC").mkdir(parents=True)
    (root / "Windows" / "CSC" / "cache.dat").write_text("kept\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, vhdx.ImageManifest, Path]:
    base = tmp_path_factory.mktemp("built")
    tree = _make_tree(base / "tree")
    image = base / "out" / "apps.vhdx"
    manifest = vhdx.build_volume_image(tree, image, label="Apps", workdir=base / "work")
    return tree, image, manifest, base


def _raw_table(image: Path, tmp: Path) -> tuple[gpt.GptTable | None, list[str]]:
    raw = tmp / "disk.raw"
    imagetools.run("qemu-img", ["convert", "-O", "raw", image, raw], what="test")
    with open(raw, "rb") as fh:
        return gpt.read_table(lambda off, n: os.pread(fh.fileno(), n, off), raw.stat().st_size)


def test_image_is_a_dynamic_vhdx(built) -> None:
    _, image, manifest, _ = built
    info = vhdx.qemu_info(image)
    assert info["format"] == "vhdx"
    assert info["virtual-size"] == manifest.disk_size
    assert manifest.disk_size % MIB == 0
    assert manifest.image_size == image.stat().st_size
    assert manifest.image_sha256 == sha256_file(image)


def test_gpt_has_one_ntfs_partition_named_after_the_label(built, tmp_path: Path) -> None:
    _, image, manifest, _ = built
    table, problems = _raw_table(image, tmp_path)
    assert problems == []
    assert table is not None and len(table.partitions) == 1
    (part,) = table.partitions
    assert part.type_guid == gpt.BASIC_DATA and part.name == "Apps"
    assert part.offset == MIB and part.size == manifest.volume_size
    # the volume inside really is NTFS
    raw = tmp_path / "disk.raw"
    with open(raw, "rb") as fh:
        assert os.pread(fh.fileno(), 8, part.offset + 3) == b"NTFS    "


def test_files_read_back_byte_for_byte(built, tmp_path: Path) -> None:
    tree, image, _, _ = built
    dest = tmp_path / "back"
    found = vhdx.read_image_files(image, dest, workdir=tmp_path / "work")
    assert (found.label, found.partition_name) == ("Apps", "Apps")
    cmp = filecmp.dircmp(tree, dest)

    def same(c: filecmp.dircmp) -> None:
        assert not c.left_only and not c.right_only and not c.funny_files, (c.left_only, c.right_only)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors
        for sub in c.subdirs.values():
            same(sub)

    same(cmp)
    assert (dest / "empty-dir").is_dir() and (dest / "empty.txt").stat().st_size == 0
    assert list((tmp_path / "work").iterdir()) == []  # scratch files are cleaned up


def test_manifest_lists_the_tree_sorted_and_round_trips(built) -> None:
    _, _, manifest, _ = built
    paths = [f.path for f in manifest.files]
    assert paths == sorted(paths)
    assert "bin/lib/deep/config.ini" in paths and "Größe – µSR ✓.txt" in paths
    assert manifest.directories == ["Windows", "Windows/CSC", "bin", "bin/lib", "bin/lib/deep", "empty-dir"]
    big = next(f for f in manifest.files if f.path == "bin/server.dll")
    assert big.size == MIB
    assert set(manifest.tools) == {"qemu-img", "mkntfs", "wimlib-imagex"}
    again = vhdx.ImageManifest.from_json(manifest.to_json())
    assert again == manifest
    assert json.loads(again.to_json()) == json.loads(manifest.to_json())


def test_intact_image_verifies(built, tmp_path: Path) -> None:
    _, image, manifest, _ = built
    assert vhdx.verify_image(image, manifest, workdir=tmp_path) == []


def _flip(image: Path, offset: int, tmp_path: Path) -> Path:
    damaged = tmp_path / "damaged.vhdx"
    data = bytearray(image.read_bytes())
    data[offset] ^= 0x01
    damaged.write_bytes(data)
    return damaged


def test_flipped_file_byte_is_named(built, tmp_path: Path) -> None:
    tree, image, manifest, _ = built
    needle = (tree / "bin" / "server.dll").read_bytes()[4096:4096 + 64]
    offset = image.read_bytes().find(needle)
    assert offset > 0
    problems = vhdx.verify_image(_flip(image, offset + 10, tmp_path), manifest, workdir=tmp_path)
    assert problems[0].startswith("image sha256 mismatch")
    assert "sha256 mismatch: bin/server.dll" in problems


def test_flipped_gpt_byte_is_named(built, tmp_path: Path) -> None:
    _, image, manifest, _ = built
    offset = image.read_bytes().find(b"EFI PART")  # the primary header comes first
    problems = vhdx.verify_image(_flip(image, offset + 1, tmp_path), manifest, workdir=tmp_path)
    assert any(p.startswith("primary GPT header: signature") for p in problems), problems


def test_flipped_unused_byte_fails_on_the_image_hash(built, tmp_path: Path) -> None:
    _, image, manifest, _ = built
    header_at = image.read_bytes().find(b"EFI PART")
    # LBA 100 lies between the GPT entry array (ends at LBA 33) and the partition (LBA 2048): unused
    unused = header_at - gpt.SECTOR + 100 * gpt.SECTOR
    problems = vhdx.verify_image(_flip(image, unused, tmp_path), manifest, workdir=tmp_path)
    assert len(problems) == 1 and problems[0].startswith("image sha256 mismatch"), problems


def test_manifest_mismatches_are_named(built, tmp_path: Path) -> None:
    _, image, manifest, _ = built
    ghost = vhdx.FileEntry("bin/ghost.dll", 3, "0" * 64)
    edited = replace(manifest, label="Settings",
                     files=[f for f in manifest.files if f.path != "small.bin"] + [ghost])
    problems = vhdx.verify_image(image, edited, workdir=tmp_path)
    assert "NTFS label is 'Apps', expected 'Settings'" in problems
    assert "missing file: bin/ghost.dll" in problems
    assert "extra file: small.bin" in problems


def test_building_twice_gives_the_same_manifest_content(built, tmp_path: Path) -> None:
    tree, _, manifest, _ = built
    second = vhdx.build_volume_image(tree, tmp_path / "again.vhdx", label="Apps", workdir=tmp_path)
    assert second.content_key() == manifest.content_key()
    assert second.tools == manifest.tools


def test_explicit_size_is_the_virtual_disk_size(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    m = vhdx.build_volume_image(tree, tmp_path / "s.vhdx", label="Small", size_bytes=16 * MIB,
                                workdir=tmp_path / "w")
    assert m.disk_size == 16 * MIB and m.volume_size == 14 * MIB
    assert vhdx.qemu_info(tmp_path / "s.vhdx")["virtual-size"] == 16 * MIB


def test_empty_volume_is_sparse_and_labelled(tmp_path: Path) -> None:
    image = tmp_path / "var.vhdx"
    m = vhdx.create_empty_volume(image, label="Var", size_bytes=1024 * MIB, workdir=tmp_path / "w")
    info = vhdx.qemu_info(image)
    assert info["format"] == "vhdx" and info["virtual-size"] == 1024 * MIB
    assert imagetools.allocated_bytes(image) < 64 * MIB
    assert m.files == [] and m.directories == []
    found = vhdx.read_image_files(image, tmp_path / "back", workdir=tmp_path / "w")
    assert (found.label, found.partition_name) == ("Var", "Var")
    assert list((tmp_path / "back").iterdir()) == []
    assert vhdx.verify_image(image, m, workdir=tmp_path / "w") == []


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record any attempt to run a tool: input checks must refuse before the first one."""
    calls: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("a tool ran before the input was checked")

    monkeypatch.setattr(imagetools, "run", refuse)
    return calls


@pytest.mark.parametrize("label", ["", "has space", "x" * 33, "semi;colon", "-dash"])
def test_bad_label_is_refused_before_any_tool_runs(tmp_path: Path, no_tools: list[object],
                                                   label: str) -> None:
    (tmp_path / "t").mkdir()
    with pytest.raises(InputError, match="label"):
        vhdx.build_volume_image(tmp_path / "t", tmp_path / "o.vhdx", label=label, workdir=tmp_path)
    with pytest.raises(InputError, match="label"):
        vhdx.create_empty_volume(tmp_path / "e.vhdx", label=label, size_bytes=16 * MIB, workdir=tmp_path)
    assert no_tools == [] and not (tmp_path / "o.vhdx").exists()


def test_windows_managed_root_folders_are_refused(tmp_path: Path, no_tools: list[object]) -> None:
    (tmp_path / "t" / "System Volume Information").mkdir(parents=True)
    with pytest.raises(InputError, match="Windows keeps this folder"):
        vhdx.build_volume_image(tmp_path / "t", tmp_path / "o.vhdx", label="Apps", workdir=tmp_path)
    assert no_tools == []


@pytest.mark.parametrize("name", ["a:b.txt", "back\\slash", "CON", "nul.txt", "Com1.log", "dot.",
                                  "space ", "what?", "tab\there"])
def test_bad_file_name_is_refused_before_any_tool_runs(tmp_path: Path, no_tools: list[object],
                                                       name: str) -> None:
    tree = tmp_path / "t" / "sub"
    tree.mkdir(parents=True)
    (tree / name).write_text("x")
    with pytest.raises(InputError) as err:
        vhdx.build_volume_image(tmp_path / "t", tmp_path / "o.vhdx", label="Apps", workdir=tmp_path)
    assert name in str(err.value) and "Fix:" in str(err.value)
    assert no_tools == []


def test_case_twins_and_symlinks_are_refused(tmp_path: Path, no_tools: list[object]) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "Readme.txt").write_text("a")
    (tree / "README.txt").write_text("b")
    with pytest.raises(InputError, match="differ only in case"):
        vhdx.build_volume_image(tree, tmp_path / "o.vhdx", label="Apps", workdir=tmp_path)
    (tree / "README.txt").unlink()
    (tree / "link").symlink_to(tree / "Readme.txt")
    with pytest.raises(InputError, match="symbolic link"):
        vhdx.build_volume_image(tree, tmp_path / "o.vhdx", label="Apps", workdir=tmp_path)
    assert no_tools == []


def test_bad_sizes_are_refused(tmp_path: Path, no_tools: list[object]) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "big").write_bytes(b"\0" * (5 * MIB))
    with pytest.raises(InputError, match="MiB"):
        vhdx.create_empty_volume(tmp_path / "e.vhdx", label="Var", size_bytes=16 * MIB + 1, workdir=tmp_path)
    with pytest.raises(InputError, match="too small"):
        vhdx.create_empty_volume(tmp_path / "e.vhdx", label="Var", size_bytes=2 * MIB, workdir=tmp_path)
    with pytest.raises(InputError, match="more than"):
        vhdx.build_volume_image(tree, tmp_path / "o.vhdx", label="Apps", size_bytes=6 * MIB,
                                workdir=tmp_path)
    assert no_tools == []


def test_tool_failure_during_a_build_leaves_nothing_behind(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "big.bin").write_bytes(random.Random(1).randbytes(5 * MIB + MIB // 2))
    out = tmp_path / "out" / "o.vhdx"
    with pytest.raises(ImagingError) as err:  # the data fits the 6 MiB volume, NTFS metadata does not
        vhdx.build_volume_image(tree, out, label="Apps", size_bytes=8 * MIB, workdir=tmp_path / "w")
    assert "wimlib-imagex failed" in str(err.value)
    assert len(str(err.value).splitlines()) > 1  # the tool's own words follow
    assert not out.exists() and list((tmp_path / "w").iterdir()) == []


def test_missing_tool_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(imagetools, "_EXTRA_DIRS", ())
    (tmp_path / "t").mkdir()
    with pytest.raises(ImagingError, match="apt-get install ntfs-3g qemu-utils wimtools"):
        vhdx.build_volume_image(tmp_path / "t", tmp_path / "o.vhdx", label="Apps", workdir=tmp_path)
    with pytest.raises(ImagingError, match="apt-get install wimtools"):
        imagetools.tool("wimlib-imagex")


def test_tool_failure_carries_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(ImagingError) as err:
        imagetools.run("qemu-img", ["info", tmp_path / "absent.vhdx"], what="reading the image")
    text = str(err.value)
    assert text.startswith("reading the image: qemu-img failed") and "absent.vhdx" in text


def test_reading_a_non_image_fails_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.vhdx"
    junk.write_bytes(b"not a disk" * 1000)
    with pytest.raises(ImagingError, match="not 'vhdx'"):
        vhdx.read_image_files(junk, tmp_path / "back", workdir=tmp_path / "w")
    problems = vhdx.verify_image(junk, replace(_dummy_manifest(), image_size=10000), workdir=tmp_path)
    assert problems[0].startswith("image sha256 mismatch")
    assert any("not 'vhdx'" in p for p in problems)


def _dummy_manifest() -> vhdx.ImageManifest:
    return vhdx.ImageManifest(label="Apps", partition_name="Apps", disk_size=3 * MIB, volume_size=MIB,
                              image_size=0, image_sha256="0" * 64)


def test_manifest_json_is_validated() -> None:
    good = json.loads(_dummy_manifest().to_json())
    bad = dict(good, image_sha256="XYZ")
    with pytest.raises(InputError, match="image_sha256"):
        vhdx.ImageManifest.from_json(json.dumps(bad), file="m.json")
    with pytest.raises(InputError, match="format"):
        vhdx.ImageManifest.from_json(json.dumps(dict(good, format=99)))
    with pytest.raises(InputError, match="m.json"):
        vhdx.ImageManifest.from_json("{", file="m.json")
    missing = {k: v for k, v in good.items() if k != "label"}
    with pytest.raises(InputError, match="label"):
        vhdx.ImageManifest.from_dict(missing)
