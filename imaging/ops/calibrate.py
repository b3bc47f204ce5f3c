"""`invoke calibrate --from=REPORT`: a time model from what a real run measured.

A fleet run's JSON report keeps each instrument's measured seconds per phase (``phases``: the journal's step
times, summed per phase, and the time outside any step as ``plan``). The mean of each phase over the
instruments that succeeded becomes the matching time-model key; the rest of the model (bandwidths, image
sizes, staging) comes from the base model. The model is written as YAML for ``--model=``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from imaging.core.errors import InputError
from imaging.engine.scheduler import OK
from imaging.engine.simulate import GB, MB, TimeModel
from imaging.ops.context import Context

# Which model key each measured phase sets, per kind of run (a switch and a prepare have their own keys).
KEYS: dict[str, dict[str, str]] = {
    "deploy": {"plan": "plan_s", "stop": "vm_stop_s", "disks": "disk_ops_s", "boot": "vm_boot_s",
               "guest": "guest_config_s", "check": "health_check_s"},
    "switch": {"plan": "plan_s", "stop": "vm_stop_s", "disks": "switch_disk_ops_s", "boot": "vm_boot_s",
               "guest": "switch_guest_s", "check": "health_check_s"},
    "prepare": {"plan": "plan_s"},
}
BACKUP_KEY = {"deploy": "var_backup_gb", "switch": "switch_backup_gb"}


@dataclass
class Calibration:
    model: TimeModel
    source: str
    kind: str
    instruments: int
    measured: dict[str, float]  # phase -> mean seconds

    def yaml_text(self) -> str:
        base = asdict(TimeModel())
        changed = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self.model).items()
                   if v != base[k]}
        head = (f"# Time model calibrated by `invoke calibrate` from {self.source}\n"
                f"# ({self.kind}, {self.instruments} instrument(s) measured, "
                f"{datetime.now(UTC).isoformat(timespec='seconds')}); use it with --model=\n")
        return head + yaml.safe_dump(changed, sort_keys=True)


def find_report(ctx: Context, source: str) -> Path:
    """A report by path, or by run id (its JSON in the reports folder)."""
    path = Path(source)
    if path.suffix in (".html", ".md"):
        path = path.with_suffix(".json")
    if not path.exists():
        path = ctx.paths.reports / f"{source}.json"
    if not path.is_file():
        raise InputError("no such report", field="--from", value=source,
                         fix=f"give a run id or the path of its .json report (they are in {ctx.paths.reports})")
    return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def calibrate(ctx: Context, source: str, base: TimeModel | None = None) -> Calibration:
    """The base model (default: the defaults) with every phase the report measured; refused (InputError)
    for a report without real measurements."""
    path = find_report(ctx, source)
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"the report cannot be read: {exc}", file=str(path), fix="give the JSON report of a run") \
            from None
    kind = str(record.get("kind", ""))
    if kind not in KEYS:
        raise InputError(f"this is the report of {'an ' + kind if kind else 'no known'} run, not of a deploy, "
                         "prepare or switch: its phases are not the time model's", file=str(path), field="kind",
                         value=kind,
                         fix="calibrate from a deploy, prepare or switch report")
    results = record.get("results") or {}
    phases = {name: p for name, p in (record.get("phases") or {}).items()
              if isinstance(p, dict) and (results.get(name) or {}).get("status") == OK}
    if not phases or not any(v > 0 for p in phases.values() for v in p.values()):
        raise InputError("the report has no real measurements: no instrument that succeeded has measured phases",
                         file=str(path), field="phases",
                         fix="calibrate from the report of a real run (not a --simulate), with instruments that "
                             "succeeded")
    model = base or TimeModel()
    measured: dict[str, float] = {}
    updates: dict[str, Any] = {}
    for phase in ("plan", "stop", "backup", "disks", "boot", "guest", "check"):
        values = [float(p.get(phase, 0.0)) for p in phases.values()]
        measured[phase] = _mean(values)
        if phase in KEYS[kind]:
            updates[KEYS[kind][phase]] = measured[phase]
    if kind in BACKUP_KEY:  # the backup is a copy through the host's disk: its size at the model's speed
        updates[BACKUP_KEY[kind]] = measured["backup"] * model.host_disk_mb_s * MB / GB
    if kind == "prepare":
        updates["disk_ops_s"] = measured["disks"] + model.switch_disk_ops_s
    undo = [float(p["undo"]) for name, p in (record.get("phases") or {}).items()
            if isinstance(p, dict) and p.get("undo")]
    if undo:
        updates["undo_s"] = _mean(undo)
    known = {f.name for f in fields(TimeModel)}
    values = {**asdict(model), **{k: v for k, v in updates.items() if k in known}}
    return Calibration(TimeModel(**values), str(path), kind, len(phases), measured)
