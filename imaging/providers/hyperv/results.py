"""What a script run produced: the one parser of a step script's framed JSON result, and the script's own
words for an error record."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.core.redaction import redact


@dataclass
class ScriptResult:
    """What one script run produced: its JSON result and what else it said."""

    host: str
    step: str
    data: dict[str, Any]
    output: list[str]
    warnings: list[str]
    attempts: int
    duration_s: float


def _as_lines(output_lines: Iterable[object]) -> list[str]:
    lines: list[str] = []
    for item in output_lines:
        text = "" if item is None else str(item)
        lines.extend(text.splitlines() or [""])
    return lines


def _redact_value(value: Any) -> Any:
    """``value`` with every registered secret removed from its strings (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}
    return value


def parse_result(output_lines: Iterable[object], *, host: str, step: str) -> dict[str, Any]:
    """The one JSON object a step script wrote between ``RESULT_BEGIN`` and ``RESULT_END``.

    The only result parser: the session pool uses it for every script, the hyperv provider reads what it
    returns. Exactly one framed block must be present (lines may carry CR/LF and indentation), holding a JSON
    object with a boolean ``changed`` (the step contract); anything else is a ProviderError naming host and
    step, with the tail of the output to go on. Secrets are redacted from the returned strings, because
    results are journaled.
    """
    lines = [line.rstrip("\r") for line in _as_lines(output_lines)]
    begins = [i for i, line in enumerate(lines) if line.strip() == RESULT_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == RESULT_END]
    if not begins and not ends:
        tail = redact(" | ".join(x.strip() for x in lines[-5:] if x.strip()))[:300]
        raise ProviderError(
            f"the script wrote no result: no {RESULT_BEGIN} ... {RESULT_END} block in its "
            f"output (last output: {tail or 'nothing'})",
            host=host,
            step=step,
        )
    if len(begins) > 1 or len(ends) > 1:
        raise ProviderError(
            f"the script wrote {max(len(begins), len(ends))} results; exactly one is allowed",
            host=host,
            step=step,
        )
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        missing = RESULT_END if not ends else RESULT_BEGIN if not begins else "marker order"
        raise ProviderError(
            f"the script's result block is incomplete ({missing} missing or out of place)",
            host=host,
            step=step,
        )
    text = "\n".join(lines[begins[0] + 1 : ends[0]]).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        excerpt = redact(text)[:200]
        raise ProviderError(
            f"the script's result is not valid JSON ({err.msg} at line {err.lineno} column "
            f"{err.colno}): {excerpt!r}",
            host=host,
            step=step,
        ) from None
    if not isinstance(data, dict):
        raise ProviderError(
            f"the script's result must be a JSON object, got {type(data).__name__}", host=host, step=step
        )
    if not isinstance(data.get("changed"), bool):
        raise ProviderError("the script's result lacks a boolean 'changed'", host=host, step=step)
    return _redact_value(data)


def _prop(obj: object, *names: str) -> Any:
    for name in names:
        for source in (getattr(obj, "adapted_properties", None), getattr(obj, "extended_properties", None)):
            if isinstance(source, dict) and source.get(name) not in (None, ""):
                return source[name]
        value = getattr(obj, name, None)
        if value not in (None, ""):
            return value
    return None


def describe_error_record(record: object) -> str:
    """The script's own words for an error record, with where in the script it happened."""
    message = (
        _prop(getattr(record, "exception", None), "Message", "to_string")
        if getattr(record, "exception", None) is not None
        else None
    )
    message = message or _prop(record, "details_message", "message", "reason", "fq_error") or "unknown error"
    where = []
    line_no = getattr(record, "invocation_script_line_number", None)
    if line_no:
        where.append(f"line {line_no}")
    line = getattr(record, "invocation_line", None)
    if line:
        where.append(f"in: {str(line).strip()}")
    if not where and getattr(record, "invocation_position_message", None):
        where.append(str(record.invocation_position_message).strip())
    return f"{message}" + (f" (script {' '.join(where)})" if where else "")


