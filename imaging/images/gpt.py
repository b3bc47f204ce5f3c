"""GUID partition tables written and read in pure Python.

A disk image needs a partition table Windows accepts: a protective MBR, a primary GPT header and entry
array at the front, and a backup entry array and header at the end, each header and array guarded by a
CRC32. Writing it ourselves (rather than calling sgdisk) keeps the build free of root and of another
package, and lets the reader check every field when an image is verified.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from imaging.core.errors import ImagingError

SECTOR = 512
MIB = 1024 * 1024
ALIGN_SECTORS = MIB // SECTOR
ENTRY_COUNT = 128
ENTRY_SIZE = 128
ENTRY_ARRAY_BYTES = ENTRY_COUNT * ENTRY_SIZE
ENTRY_ARRAY_SECTORS = ENTRY_ARRAY_BYTES // SECTOR  # 32
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
NAME_CHARS = 36

BASIC_DATA = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
"""The "Microsoft basic data" partition type: NTFS, FAT and exFAT volumes on GPT disks."""

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")

ReadAt = Callable[[int, int], bytes]


class GptError(ImagingError):
    """The partition table cannot be built as asked, or a read table is damaged."""


@dataclass(frozen=True)
class Partition:
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class GptTable:
    disk_guid: uuid.UUID
    disk_sectors: int
    partitions: tuple[Partition, ...]

    @property
    def first_usable_lba(self) -> int:
        return 2 + ENTRY_ARRAY_SECTORS

    @property
    def last_usable_lba(self) -> int:
        return self.disk_sectors - 2 - ENTRY_ARRAY_SECTORS


def single_partition_layout(volume_bytes: int, *, name: str, disk_guid: uuid.UUID | None = None,
                            partition_guid: uuid.UUID | None = None) -> GptTable:
    """One basic-data partition starting at 1 MiB, followed by 1 MiB that holds the backup table.

    ``volume_bytes`` must be a whole number of MiB, so the partition stays 1 MiB aligned at both ends
    and the disk size is a whole number of MiB too (what Hyper-V expects of a VHDX).
    """
    if volume_bytes <= 0 or volume_bytes % MIB:
        raise GptError(f"volume size {volume_bytes} is not a positive whole number of MiB")
    first = ALIGN_SECTORS
    last = first + volume_bytes // SECTOR - 1
    disk_sectors = last + 1 + ALIGN_SECTORS
    part = Partition(BASIC_DATA, partition_guid or uuid.uuid4(), first, last, name)
    table = GptTable(disk_guid or uuid.uuid4(), disk_sectors, (part,))
    _check_table(table)
    return table


def _check_table(table: GptTable) -> None:
    if len(table.partitions) > ENTRY_COUNT:
        raise GptError(f"at most {ENTRY_COUNT} partitions fit the entry array")
    spans = sorted((p.first_lba, p.last_lba, p.name) for p in table.partitions)
    for first, last, name in spans:
        if first < table.first_usable_lba or last > table.last_usable_lba or last < first:
            raise GptError(f"partition {name!r} (LBA {first}-{last}) lies outside the usable area "
                           f"{table.first_usable_lba}-{table.last_usable_lba}")
    for (_, a_last, a_name), (b_first, _, b_name) in zip(spans, spans[1:], strict=False):
        if b_first <= a_last:
            raise GptError(f"partitions {a_name!r} and {b_name!r} overlap")
    for p in table.partitions:
        if len(p.name.encode("utf-16-le")) > NAME_CHARS * 2:
            raise GptError(f"partition name {p.name!r} is longer than {NAME_CHARS} UTF-16 units")


def protective_mbr(disk_sectors: int) -> bytes:
    """Sector 0: one partition of type 0xEE covering the disk, so MBR-only tools leave the disk alone."""
    mbr = bytearray(SECTOR)
    size = min(disk_sectors - 1, 0xFFFFFFFF)
    # status, CHS first (0/0/2), type, CHS last (saturated), first LBA, sector count
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def entry_array(table: GptTable) -> bytes:
    out = bytearray(ENTRY_ARRAY_BYTES)
    for i, p in enumerate(table.partitions):
        name = p.name.encode("utf-16-le").ljust(72, b"\x00")
        out[i * ENTRY_SIZE:(i + 1) * ENTRY_SIZE] = _ENTRY.pack(
            p.type_guid.bytes_le, p.unique_guid.bytes_le, p.first_lba, p.last_lba, p.attributes, name)
    return bytes(out)


def header(table: GptTable, *, backup: bool, entries_crc: int) -> bytes:
    last = table.disk_sectors - 1
    my_lba, alt_lba = (last, 1) if backup else (1, last)
    entries_lba = last - ENTRY_ARRAY_SECTORS if backup else 2
    fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, my_lba, alt_lba, table.first_usable_lba,
              table.last_usable_lba, table.disk_guid.bytes_le, entries_lba, ENTRY_COUNT, ENTRY_SIZE,
              entries_crc]
    crc = zlib.crc32(_HEADER.pack(*fields))
    fields[3] = crc
    return _HEADER.pack(*fields).ljust(SECTOR, b"\x00")


def render(table: GptTable) -> tuple[bytes, bytes]:
    """The bytes for the head of the disk (LBA 0-33) and for its tail (last 33 sectors)."""
    _check_table(table)
    entries = entry_array(table)
    crc = zlib.crc32(entries)
    head = protective_mbr(table.disk_sectors) + header(table, backup=False, entries_crc=crc) + entries
    tail = entries + header(table, backup=True, entries_crc=crc)
    return head, tail


def write_table(fd: int, table: GptTable) -> None:
    """Write the protective MBR, both headers and both entry arrays into an open disk image."""
    head, tail = render(table)
    os.pwrite(fd, head, 0)
    os.pwrite(fd, tail, (table.disk_sectors - 1 - ENTRY_ARRAY_SECTORS) * SECTOR)


def _parse_header(raw: bytes, where: str, expect_lba: int, read_at: ReadAt,
                  problems: list[str]) -> tuple[tuple, bytes] | None:
    if len(raw) < HEADER_SIZE:
        problems.append(f"{where} GPT header: disk too short")
        return None
    fields = list(_HEADER.unpack(raw[:HEADER_SIZE]))
    if fields[0] != SIGNATURE:
        problems.append(f"{where} GPT header: signature is {fields[0]!r}, not {SIGNATURE!r}")
        return None
    bad = len(problems)
    if fields[2] != HEADER_SIZE:
        problems.append(f"{where} GPT header: header size {fields[2]}, expected {HEADER_SIZE}")
    stored_crc = fields[3]
    fields[3] = 0
    if zlib.crc32(_HEADER.pack(*fields)) != stored_crc:
        problems.append(f"{where} GPT header: header CRC32 mismatch")
    if fields[5] != expect_lba:
        problems.append(f"{where} GPT header: claims to be at LBA {fields[5]}, found at {expect_lba}")
    if fields[11] * fields[12] != ENTRY_ARRAY_BYTES or fields[12] != ENTRY_SIZE:
        problems.append(f"{where} GPT header: unexpected entry array shape {fields[11]} x {fields[12]}")
        return None
    entries = read_at(fields[10] * SECTOR, ENTRY_ARRAY_BYTES)
    if zlib.crc32(entries) != fields[13]:
        problems.append(f"{where} GPT entry array: CRC32 mismatch")
    if len(problems) > bad:
        return None
    return tuple(fields), entries


def read_table(read_at: ReadAt, disk_bytes: int) -> tuple[GptTable | None, list[str]]:
    """Parse and check a GPT: protective MBR, both headers, both arrays, CRCs, and that they agree.

    Returns the table (from the primary header, or the backup when only the primary is damaged) and the
    list of problems found; an empty list means the table is intact.
    """
    problems: list[str] = []
    if disk_bytes % SECTOR or disk_bytes < (3 + 2 * ENTRY_ARRAY_SECTORS) * SECTOR:
        return None, [f"disk size {disk_bytes} is too small or not a whole number of sectors"]
    sectors = disk_bytes // SECTOR
    mbr = read_at(0, SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        problems.append("protective MBR: boot signature 55AA missing")
    elif mbr[450] != 0xEE:
        problems.append(f"protective MBR: first partition type is 0x{mbr[450]:02X}, not 0xEE")
    primary = _parse_header(read_at(SECTOR, SECTOR), "primary", 1, read_at, problems)
    backup = _parse_header(read_at((sectors - 1) * SECTOR, SECTOR), "backup", sectors - 1, read_at,
                           problems)
    if primary and backup:
        p, b = primary[0], backup[0]
        if p[6] != sectors - 1:
            problems.append(f"primary GPT header: backup LBA {p[6]} is not the last sector {sectors - 1}")
        if (p[7], p[8], p[9]) != (b[7], b[8], b[9]) or primary[1] != backup[1]:
            problems.append("primary and backup GPT disagree")
    chosen = primary or backup
    if chosen is None:
        return None, problems
    fields, entries = chosen
    parts = []
    for i in range(ENTRY_COUNT):
        type_le, uniq_le, first, last, attrs, name = _ENTRY.unpack_from(entries, i * ENTRY_SIZE)
        if type_le == b"\x00" * 16:
            continue
        text = name.decode("utf-16-le", errors="replace").split("\x00", 1)[0]
        parts.append(Partition(uuid.UUID(bytes_le=type_le), uuid.UUID(bytes_le=uniq_le), first, last,
                               text, attrs))
    table = GptTable(uuid.UUID(bytes_le=fields[9]), sectors, tuple(parts))
    if (fields[7], fields[8]) != (table.first_usable_lba, table.last_usable_lba):
        problems.append(f"GPT usable area {fields[7]}-{fields[8]} is not the standard "
                        f"{table.first_usable_lba}-{table.last_usable_lba}")
    try:
        _check_table(table)
    except GptError as exc:
        problems.append(f"GPT partitions: {exc}")
    return table, problems
