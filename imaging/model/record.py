"""The instrument's own record (on its Var disk): what it runs, written by the operation that put it there.

It carries a checksum of its own content, so a flipped byte reads as damaged instead of as another release.
"""

from __future__ import annotations

from typing import Any

from imaging.core.hashing import value_sum

SUM = "sum"


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its checksum (any earlier one is replaced: a changed record is sealed afresh)."""
    body = {k: v for k, v in record.items() if k != SUM}
    return {**body, SUM: value_sum(body)}


def problem(record: object) -> str | None:
    """Why a record read back cannot be trusted, or None. Records from before checksums have none and pass."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    if SUM in record and record[SUM] != value_sum({k: v for k, v in record.items() if k != SUM}):
        return "its checksum does not match its content"
    return None
