"""Reproducible tars: the same members give the same bytes; folders and streamed files survive."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from imaging.core.tarball import tar_bytes, write_tar


def test_same_members_same_bytes_whatever_the_order(tmp_path: Path) -> None:
    a = tar_bytes({"b/x.txt": b"x", "a.txt": b"a", "empty": None})
    b = tar_bytes({"empty": None, "a.txt": b"a", "b/x.txt": b"x"})
    assert a == b
    assert tar_bytes({"a.txt": b"A"}) != tar_bytes({"a.txt": b"a"})


def test_folders_files_and_streamed_files_read_back(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4096)
    out = tmp_path / "t.tar"
    write_tar({"data/big.bin": big, "Users/operator/Desktop": None, "v.txt": b"1\n"}, out)
    with tarfile.open(out) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert names["Users/operator/Desktop"].isdir()
        assert names["data"].isdir() and names["data/big.bin"].size == big.stat().st_size
        assert tar.extractfile("data/big.bin").read() == big.read_bytes()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in names.values())
    with tarfile.open(fileobj=io.BytesIO(out.read_bytes())) as tar:
        assert tar.getnames()[0] == "Users"
