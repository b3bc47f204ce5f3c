"""The GPT writer and reader agree with each other and with the UEFI layout, and catch damage."""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib

import pytest

from imaging.images import gpt

MIB = 1024 * 1024


def _disk(table: gpt.GptTable) -> bytearray:
    head, tail = gpt.render(table)
    disk = bytearray(table.disk_sectors * gpt.SECTOR)
    disk[: len(head)] = head
    disk[len(disk) - len(tail):] = tail
    return disk


def _read(disk: bytes | bytearray) -> tuple[gpt.GptTable | None, list[str]]:
    return gpt.read_table(lambda off, n: bytes(disk[off:off + n]), len(disk))


@pytest.fixture
def table() -> gpt.GptTable:
    return gpt.single_partition_layout(8 * MIB, name="Apps", disk_guid=uuid.UUID(int=1),
                                       partition_guid=uuid.UUID(int=2))


def test_layout_is_one_aligned_basic_data_partition(table: gpt.GptTable) -> None:
    assert table.disk_sectors * gpt.SECTOR == 10 * MIB
    (part,) = table.partitions
    assert part.offset == MIB and part.size == 8 * MIB
    assert part.type_guid == uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
    assert table.last_usable_lba == table.disk_sectors - 34
    assert part.last_lba <= table.last_usable_lba


def test_round_trip(table: gpt.GptTable) -> None:
    back, problems = _read(_disk(table))
    assert problems == []
    assert back == table


def test_on_disk_fields_follow_the_uefi_layout(table: gpt.GptTable) -> None:
    disk = _disk(table)
    assert disk[510:512] == b"\x55\xaa" and disk[450] == 0xEE
    assert struct.unpack_from("<I", disk, 454)[0] == 1  # protective partition starts at LBA 1
    hdr = disk[512:512 + 92]
    assert hdr[:8] == b"EFI PART"
    my_lba, alt_lba, first_usable, last_usable = struct.unpack_from("<QQQQ", hdr, 24)
    assert (my_lba, alt_lba, first_usable) == (1, table.disk_sectors - 1, 34)
    zeroed = hdr[:16] + b"\0\0\0\0" + hdr[20:]
    assert zlib.crc32(zeroed) == struct.unpack_from("<I", hdr, 16)[0]
    entries = disk[1024:1024 + 128 * 128]
    assert zlib.crc32(entries) == struct.unpack_from("<I", hdr, 88)[0]
    # GUIDs are stored mixed-endian; the name is UTF-16LE
    assert entries[:16] == bytes.fromhex("a2a0d0ebe5b9334487c068b6b72699c7")
    assert entries[56:56 + 8] == "Apps".encode("utf-16-le")
    backup = disk[len(disk) - 512:len(disk) - 512 + 92]
    assert backup[:8] == b"EFI PART"
    assert struct.unpack_from("<QQ", backup, 24) == (table.disk_sectors - 1, 1)
    assert struct.unpack_from("<Q", backup, 72)[0] == table.disk_sectors - 33


@pytest.mark.parametrize(("offset", "expected"), [
    (512 + 3, "primary GPT header: signature"),
    (512 + 40, "primary GPT header: header CRC32 mismatch"),
    (1024 + 60, "primary GPT entry array: CRC32 mismatch"),
    (-512 + 40, "backup GPT header: header CRC32 mismatch"),
    (-512 - 100, "backup GPT entry array: CRC32 mismatch"),
    (510, "protective MBR"),
])
def test_each_damaged_byte_is_named(table: gpt.GptTable, offset: int, expected: str) -> None:
    disk = _disk(table)
    disk[offset] ^= 0x01
    back, problems = _read(disk)
    assert any(p.startswith(expected) for p in problems), problems


def test_damaged_primary_falls_back_to_backup(table: gpt.GptTable) -> None:
    disk = _disk(table)
    disk[1024 + 60] ^= 0xFF
    back, problems = _read(disk)
    assert problems and back is not None and back.partitions == table.partitions


def test_refuses_unaligned_or_oversized_requests() -> None:
    with pytest.raises(gpt.GptError, match="MiB"):
        gpt.single_partition_layout(MIB + 512, name="X")
    with pytest.raises(gpt.GptError, match="36"):
        gpt.single_partition_layout(MIB, name="x" * 37)


def test_overlapping_partitions_are_refused() -> None:
    a = gpt.Partition(gpt.BASIC_DATA, uuid.uuid4(), 2048, 4095, "a")
    b = gpt.Partition(gpt.BASIC_DATA, uuid.uuid4(), 4000, 6000, "b")
    with pytest.raises(gpt.GptError, match="overlap"):
        gpt.render(gpt.GptTable(uuid.uuid4(), 10000, (a, b)))


def test_too_small_disk_is_reported() -> None:
    table, problems = _read(bytearray(4096))
    assert table is None and problems


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="gdisk not installed (apt-get install gdisk)")
def test_sgdisk_agrees(table: gpt.GptTable, tmp_path) -> None:
    """An independent implementation reads our table without complaint (when gdisk is installed)."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(_disk(table))
    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True, check=True)
    assert "No problems found" in verify.stdout
    info = subprocess.run(["sgdisk", "-i", "1", str(disk)], capture_output=True, text=True, check=True)
    assert "Microsoft basic data" in info.stdout and "'Apps'" in info.stdout
    assert "First sector: 2048" in info.stdout
