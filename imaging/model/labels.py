"""Labels (current, previous, qa, recommended): movable names for releases, per group, kept in git."""

from __future__ import annotations

from pathlib import Path

import yaml

from imaging.core.errors import InputError

LABELS_FILE = "labels.yaml"
KNOWN_LABELS = ("current", "previous", "qa", "recommended")


def load_labels(releases_dir: Path) -> dict[str, dict[str, str]]:
    """group -> label -> release id. A missing file means no labels yet."""
    path = Path(releases_dir) / LABELS_FILE
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=str(path), fix="correct the YAML syntax") from None
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict):
        raise InputError("expected a mapping under 'labels:'", file=str(path), field="labels",
                         fix="write labels: <group>: <label>: <release id>")
    out: dict[str, dict[str, str]] = {}
    for group, entries in labels.items():
        if not isinstance(entries, dict):
            raise InputError("expected label: release lines", file=str(path), field=f"labels.{group}",
                             fix="write one '<label>: <release id>' per line")
        for label in entries:
            if label not in KNOWN_LABELS:
                raise InputError("unknown label", file=str(path), field=f"labels.{group}.{label}", value=label,
                                 fix=f"use one of {', '.join(KNOWN_LABELS)}")
        out[str(group)] = {str(k): str(v) for k, v in entries.items()}
    return out


def resolve(name: str, *, group: str, labels: dict[str, dict[str, str]], releases: dict[str, object],
            source: str) -> str:
    """Turn a release id or a label of ``group`` into a release id that has a definition."""
    if name in KNOWN_LABELS:
        target = labels.get(group, {}).get(name)
        if target is None:
            raise InputError(f"label '{name}' is not set for group {group}", file=source, field="release",
                             value=name, fix=f"set it in releases/{LABELS_FILE} or `invoke promote`")
        name = target
    if name not in releases:
        raise InputError("no such release", file=source, field="release", value=name,
                         fix=f"use a release from releases/ ({', '.join(sorted(releases))}) or a label")
    return name
