"""The content-addressed artifact store: add, dedupe, immutability, corruption, staging."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from imaging.core.errors import ArtifactError, InputError
from imaging.state import copying
from imaging.state.store import ArtifactManifest, ArtifactStore


def _file(path: Path, size: int, seed: int = 1) -> Path:
    """Deterministic pseudo-random content of ``size`` bytes (not all zeros, so a flip is visible)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    path.write_bytes(bytes(out[:size]))
    return path


def _flip(path: Path, offset: int) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks so that multi-chunk paths (double buffering, early writeback, resume) run on small
    files."""
    monkeypatch.setattr(copying, "CHUNK", 4096)
    monkeypatch.setattr(copying, "WRITEBACK_EVERY", 3 * 4096)


def test_add_get_verify(store: ArtifactStore, tmp_path: Path, small_chunks: None) -> None:
    src = _file(tmp_path / "os.vhdx", 50_000)
    seen: list[tuple[int, int]] = []
    m = store.add(src, name="win11-ltsc-2026.1", kind="os-template", source="build 17",
                  progress=lambda d, t: seen.append((d, t)))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert (m.sha256, m.size, m.kind) == (want, 50_000, "os-template")
    assert (m.source, m.suffix) == ("build 17", ".vhdx")
    assert m.created.utcoffset() is not None and m.created.utcoffset().total_seconds() == 0
    blob = store.root / "blobs" / want[:2] / want
    assert blob.read_bytes() == src.read_bytes()
    assert store.get("win11-ltsc-2026.1") == m
    assert store.path_of("win11-ltsc-2026.1") == blob
    assert store.verify("win11-ltsc-2026.1") == m
    assert seen[-1] == (50_000, 50_000) and len(seen) == 13
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list(store.tmp.iterdir()) == []


@pytest.mark.parametrize("threaded", [True, False])
def test_hashing_inline_or_in_a_thread_agree(store: ArtifactStore, tmp_path: Path, small_chunks: None,
                                             monkeypatch: pytest.MonkeyPatch, threaded: bool) -> None:
    monkeypatch.setattr(copying, "HASH_IN_THREAD", threaded)
    src = _file(tmp_path / "f.tar", 100_003)
    m = store.add(src, name="f", kind="hotfix")
    assert m.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.stage("f", tmp_path / "host").read_bytes() == src.read_bytes()


def test_source_defaults_to_the_file_path(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path / "f.tar", 10)
    m = store.add(src, name="f", kind="apps")
    assert m.source == str(src.resolve()) and m.suffix == ".tar"
    assert store.add(_file(tmp_path / "g.tar", 10, 3), name="g", kind="apps", suffix="").suffix == ""


def test_manifest_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    m = store.add(_file(tmp_path / "a.tar", 1000), name="apps-2026C3.0", kind="apps")
    path = store.root / "manifests" / "apps-2026C3.0.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"name", "kind", "size", "sha256", "created", "source", "suffix"}
    assert data["created"].endswith("Z")
    assert ArtifactManifest.model_validate(data) == m
    assert ArtifactStore(store.root).get("apps-2026C3.0") == m
    assert m.staged_name == f"apps-2026C3.0-{m.sha256[:12]}.tar"


def test_list(store: ArtifactStore, tmp_path: Path) -> None:
    assert store.list() == []
    store.add(_file(tmp_path / "b", 10, 2), name="b", kind="apps")
    store.add(_file(tmp_path / "a", 10, 1), name="a", kind="hotfix")
    assert [m.name for m in store.list()] == ["a", "b"]


def test_same_content_under_two_names_is_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path / "x.vhdx", 30_000)
    a = store.add(src, name="apps-a", kind="apps")
    blob = store.path_of("apps-a")
    inode = blob.stat().st_ino
    b = store.add(src, name="apps-b", kind="apps")
    assert a.sha256 == b.sha256
    blobs = [p for p in (store.root / "blobs").rglob("*") if p.is_file()]
    assert blobs == [blob] and blob.stat().st_ino == inode


def test_artifacts_are_immutable(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.add(_file(tmp_path / "v1", 1000, 1), name="apps-x", kind="apps")
    inode = store.path_of("apps-x").stat().st_ino
    again = store.add(_file(tmp_path / "v1-copy", 1000, 1), name="apps-x", kind="apps")
    assert again == first and store.path_of("apps-x").stat().st_ino == inode
    with pytest.raises(ArtifactError) as info:
        store.add(_file(tmp_path / "v2", 1000, 2), name="apps-x", kind="apps")
    assert "apps-x" in str(info.value) and first.sha256 in str(info.value) and "immutable" in str(info.value)
    with pytest.raises(ArtifactError, match="1001-byte file"):
        store.add(_file(tmp_path / "v3", 1001, 1), name="apps-x", kind="apps")
    assert store.get("apps-x") == first
    assert store.verify("apps-x") == first
    assert list(store.tmp.iterdir()) == []


@pytest.mark.parametrize(("kw", "field"), [
    ({"name": "bad name"}, "name"), ({"name": "../x"}, "name"), ({"name": ""}, "name"),
    ({"kind": "OS Template"}, "kind"), ({"suffix": "vhdx"}, "suffix"), ({"suffix": "./x"}, "suffix"),
])
def test_bad_input_is_refused_and_changes_nothing(store: ArtifactStore, tmp_path: Path, kw: dict,
                                                 field: str) -> None:
    src = _file(tmp_path / "f", 100)
    args = {"name": "ok", "kind": "apps", **kw}
    with pytest.raises(InputError) as info:
        store.add(src, **args)
    assert info.value.field == field
    assert not store.root.exists()


def test_missing_source_and_unknown_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        store.add(tmp_path / "nope", name="x", kind="apps")
    with pytest.raises(ArtifactError, match="x"):
        store.get("x")
    with pytest.raises(ArtifactError):
        store.path_of("x")


def test_corruption_detected_everywhere(store: ArtifactStore, tmp_path: Path, small_chunks: None) -> None:
    m = store.add(_file(tmp_path / "os.vhdx", 20_000), name="os", kind="os-template")
    blob = store.path_of("os")
    _flip(blob, 12_345)
    with pytest.raises(ArtifactError) as info:
        store.verify("os")
    msg = str(info.value)
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert "os" in msg and m.sha256 in msg and actual in msg
    with pytest.raises(ArtifactError, match="corrupted"):
        store.path_of("os", verify=True)
    with pytest.raises(ArtifactError, match="corrupted"), store.open_verified("os") as f:
        f.read()
    dest = tmp_path / "host"
    with pytest.raises(ArtifactError, match="corrupted"):
        store.stage("os", dest)
    assert list(dest.iterdir()) == []  # nothing half-staged, no wrong file under the final name


def test_truncated_blob_found_without_hashing(store: ArtifactStore, tmp_path: Path) -> None:
    store.add(_file(tmp_path / "f", 5000), name="f", kind="apps")
    blob = store.path_of("f")
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    os.truncate(blob, 4000)
    with pytest.raises(ArtifactError, match="4000 bytes, expected 5000"):
        store.path_of("f")
    # Adding the same content again repairs the damaged blob.
    store.add(tmp_path / "f", name="f", kind="apps")
    assert store.verify("f").size == 5000


def test_re_adding_repairs_a_flipped_blob(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path / "f", 5000)
    store.add(src, name="f", kind="apps")
    _flip(store.path_of("f"), 10)
    store.add(src, name="f", kind="apps")
    assert store.verify("f").size == 5000


def test_dedupe_never_points_at_a_damaged_blob(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path / "f", 5000)
    store.add(src, name="a", kind="apps")
    _flip(store.path_of("a"), 10)
    store.add(src, name="b", kind="apps")
    assert store.verify("b") and store.verify("a")  # the shared blob was replaced with good bytes


def test_open_verified_yields_the_content(store: ArtifactStore, tmp_path: Path, small_chunks: None) -> None:
    src = _file(tmp_path / "f", 10_000)
    store.add(src, name="f", kind="apps")
    with store.open_verified("f") as f:
        assert f.read() == src.read_bytes()


def test_stage_copies_once_and_is_idempotent(store: ArtifactStore, tmp_path: Path,
                                             small_chunks: None) -> None:
    src = _file(tmp_path / "os.vhdx", 30_000)
    m = store.add(src, name="win11", kind="os-template")
    dest = tmp_path / "host" / "images"
    calls: list[tuple[int, int]] = []
    staged = store.stage("win11", dest, progress=lambda d, t: calls.append((d, t)))
    assert staged == dest / f"win11-{m.sha256[:12]}.vhdx"
    assert staged.read_bytes() == src.read_bytes()
    assert not os.access(staged, os.W_OK) or os.geteuid() == 0
    assert calls[-1] == (30_000, 30_000) and len(calls) > 1
    before = staged.stat()
    calls.clear()
    assert store.stage("win11", dest, progress=lambda d, t: calls.append((d, t))) == staged
    after = staged.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert calls == [(30_000, 30_000)]  # no chunk was copied
    assert sorted(p.name for p in dest.iterdir()) == [staged.name]


def test_stage_replaces_a_corrupted_staged_copy(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path / "a.vhdx", 9000)
    store.add(src, name="a", kind="apps")
    staged = store.stage("a", tmp_path / "host")
    _flip(staged, 100)
    again = store.stage("a", tmp_path / "host")
    assert again == staged and staged.read_bytes() == src.read_bytes()
    # a wrong size is replaced too
    staged.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(staged, "ab") as f:
        f.write(b"junk")
    assert store.stage("a", tmp_path / "host").read_bytes() == src.read_bytes()


def test_stage_continues_a_partial(store: ArtifactStore, tmp_path: Path, small_chunks: None) -> None:
    src = _file(tmp_path / "a.vhdx", 40_000)
    m = store.add(src, name="a", kind="apps")
    dest = tmp_path / "host"
    dest.mkdir()
    partial = dest / (m.staged_name + ".partial")
    partial.write_bytes(src.read_bytes()[:17_000])
    calls: list[tuple[int, int]] = []
    staged = store.stage("a", dest, progress=lambda d, t: calls.append((d, t)))
    assert staged.read_bytes() == src.read_bytes()
    assert not partial.exists()
    assert calls[-1] == (40_000, 40_000)


def test_stage_really_continues_from_the_partial(store: ArtifactStore, tmp_path: Path,
                                                 small_chunks: None) -> None:
    """Damage the blob only inside the range the partial already holds: a continued copy never reads
    that range and succeeds, a copy from scratch would fail."""
    src = _file(tmp_path / "a.vhdx", 40_000)
    m = store.add(src, name="a", kind="apps")
    dest = tmp_path / "host"
    dest.mkdir()
    (dest / (m.staged_name + ".partial")).write_bytes(src.read_bytes()[:17_000])
    _flip(store.path_of("a"), 100)
    assert store.stage("a", dest).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("bad_partial", ["wrong-prefix", "too-long"])
def test_stage_discards_a_bad_partial(store: ArtifactStore, tmp_path: Path, bad_partial: str,
                                      small_chunks: None) -> None:
    src = _file(tmp_path / "a.vhdx", 40_000)
    m = store.add(src, name="a", kind="apps")
    dest = tmp_path / "host"
    dest.mkdir()
    partial = dest / (m.staged_name + ".partial")
    if bad_partial == "wrong-prefix":
        partial.write_bytes(b"\x00" * 17_000)
    else:
        partial.write_bytes(src.read_bytes() + b"extra")
    staged = store.stage("a", dest)
    assert staged.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [staged.name]


def test_memory_stays_constant(store: ArtifactStore, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "big.vhdx"
    with open(src, "wb") as f:
        block = os.urandom(1024 * 1024)
        for _ in range(64):
            f.write(block)
    tracemalloc.start()
    try:
        store.add(src, name="big", kind="os-template")
        store.stage("big", tmp_path / "host")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the ring of reusable chunk buffers plus bookkeeping: far below the file size
    assert peak < copying.BUFFERS * copying.CHUNK + 1024 * 1024 < size // 4
    store.verify("big")


def test_add_by_move_renames_into_the_store_and_keeps_immutability(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "built.vhdx"
    src.write_bytes(b"image bytes" * 1000)
    m = store.add(src, name="apps-x", kind="apps", move=True)
    assert not src.exists() and m.size == 11000 and m.suffix == ".vhdx"
    assert store.verify("apps-x").sha256 == m.sha256
    assert not list(store.tmp.iterdir())
    other = tmp_path / "other.vhdx"
    other.write_bytes(b"different")
    with pytest.raises(ArtifactError, match="immutable"):
        store.add(other, name="apps-x", kind="apps", move=True)
    assert not other.exists() and store.verify("apps-x").sha256 == m.sha256
