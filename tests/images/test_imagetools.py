"""Sparse copies and the in-place shifts that turn a volume into a disk and back keep every byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imaging.images import tools as imagetools

MIB = 1024 * 1024


def _sparse_file(path: Path) -> dict[int, bytes]:
    chunks = {0: b"head" * 1024, 3 * MIB: b"middle" * 1000, 8 * MIB - 4096: b"T" * 4096}
    with open(path, "wb") as fh:
        fh.truncate(8 * MIB)
        for off, data in chunks.items():
            fh.seek(off)
            fh.write(data)
    return chunks


@pytest.fixture(params=["in-place", "copy"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "copy":
        monkeypatch.setattr(imagetools, "_fallocate", lambda *a: False)
    return request.param


def test_shift_then_cut_restores_the_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "vol.img"
    chunks = _sparse_file(path)
    original = path.read_bytes()
    imagetools.shift_into_place(path, MIB, 2 * MIB)
    data = path.read_bytes()
    assert len(data) == 11 * MIB
    assert data[:MIB] == b"\0" * MIB and data[MIB:9 * MIB] == original and data[9 * MIB:] == b"\0" * 2 * MIB
    assert imagetools.allocated_bytes(path) < 2 * MIB  # still sparse
    imagetools.cut_out(path, MIB, 8 * MIB)
    assert path.read_bytes() == original
    for off, chunk in chunks.items():
        assert original[off:off + len(chunk)] == chunk


def test_copy_sparse_copies_only_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _sparse_file(src)
    dst = tmp_path / "dst"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 10 * MIB)
        copied = imagetools.copy_sparse(src, fd, src_offset=MIB, length=4 * MIB, dst_offset=512)
    finally:
        os.close(fd)
    assert 0 < copied < 2 * MIB
    out = dst.read_bytes()
    assert out[512:512 + 4 * MIB] == src.read_bytes()[MIB:5 * MIB]
    assert out[:512] == b"\0" * 512
