"""The reports of a fleet run: its record as JSON (complete) and as Markdown (for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imaging.engine.scheduler import NOT_STARTED


def write_reports(folder: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<id>.json`` and ``<id>.md`` into ``folder``; returns (markdown, json)."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"{record['id']}.json"
    js.write_text(json.dumps(record, indent=2), encoding="utf-8")
    md = folder / f"{record['id']}.md"
    md.write_text(report_markdown(record), encoding="utf-8")
    return md, js


def subject(record: dict[str, Any]) -> str:
    """What a fleet run did, in a few words: ``release 2026C3.1``, ``hotfix HF-001``, ``revert HF-001``."""
    kind = record.get("kind", "deploy")
    if kind == "deploy":
        return f"release {record['release']}"
    if kind == "apply-settings":
        return "settings " + (f"at {record['ref']}" if record.get("ref") else "of the running releases")
    return f"{kind} {record.get('hotfix', '')}".strip()


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value) if value else "-"


def report_markdown(record: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for r in record["results"].values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    kind = record.get("kind", "deploy")
    lines = [f"# {kind.capitalize()} {record['id']}", "",
             f"- {subject(record).replace(' ', ': ', 1)}" if kind == "deploy" else f"- {subject(record)}",
             f"- by: {record['user']} on {record['machine']}",
             f"- started: {record['started']}; ended: {record.get('ended') or '-'}",
             f"- status: {record['status']}" + (f" ({record['stopped']})" if record.get("stopped") else ""),
             f"- waves: {' | '.join(', '.join(w) for w in record['waves'])}",
             "- outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    for r in record.get("resumed", []):
        lines.insert(-1, f"- resumed: {r['when']} by {r['user']} on {r['machine']}")
    state = "release" if kind == "deploy" else "hotfixes"
    lines += [f"| instrument | {state} before | {state} after | result | seconds | step | error |",
              "|---|---|---|---|---|---|---|"]
    for name in record["selection"]:
        r = record["results"].get(name, {"status": NOT_STARTED})
        detail = (r.get("detail") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {_cell(record['before'].get(name))} | {_cell(record.get('after', {}).get(name))} | "
                     f"{r['status']} | {r.get('seconds', '')} | {r.get('step') or ''} | {detail} |")
    return "\n".join(lines) + "\n"
