"""Issue 17, item 3: a settings-only change of running instruments (`invoke apply-settings`), without a reimage.

The change is made inside the running guest: the VM never stops (its power history shows it), only the
services that read the changed files restart, the replaced files are kept on Var, and `invoke rollback`
puts them back. On today's main before this change, any settings change needed a whole reimage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from settings_support import commit_all, inv

from imaging.core.errors import ImagingError, InputError
from imaging.core.hashing import tree_manifest
from imaging.model.steps import Step
from imaging.ops import apply_settings as applying
from imaging.ops import facts
from imaging.ops import hotfix as hotfixing
from imaging.ops import reimage as reimaging
from imaging.ops import rollback as rollbacks
from imaging.ops.context import Context
from imaging.providers.lab.faults import InjectedFault
from tests.ops.test_hotfix import make_pkg
from tests.ops.test_reimage import ctx_for, var_dir

SETTINGS = "C:\\Instrument\\Settings"


def _settings(ctx: Context, name: str = "ZOOM") -> dict[str, str]:
    inst = ctx.inventory.instrument(name)
    return tree_manifest(ctx.providers.lab.guest_path(inst.host, inst.vm, SETTINGS).resolve())


def _guest_text(ctx: Context, rel: str, name: str = "ZOOM") -> str:
    inst = ctx.inventory.instrument(name)
    return ctx.providers.lab.guest_path(inst.host, inst.vm, f"{SETTINGS}\\{rel}").read_text(encoding="utf-8")


def _power_history(ctx: Context, name: str = "ZOOM") -> list[str]:
    inst = ctx.inventory.instrument(name)
    return [e["power"] for e in ctx.providers.lab._vm(inst.host, inst.vm, step="test")["power_history"]]


def _services(ctx: Context, name: str = "ZOOM") -> dict:
    inst = ctx.inventory.instrument(name)
    return json.loads(ctx.providers.lab.guest_path(
        inst.host, inst.vm, "C:\\Windows\\System32\\config\\lab-guest\\services.json").read_text())


def _set_variable(project: Path, name: str, key: str, value: object) -> None:
    import yaml

    f = project / "instruments" / "fleet" / f"{name}.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["variables"][key] = value
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    commit_all(project, f"{name}: {key} = {value}")


def test_apply_settings_changes_a_running_instrument_without_stopping_it_and_rollback_restores(project: Path) -> None:
    """The Done-when story through the command line, with the sample settings repository (ZOOM's branch is
    merged with the common line): a variable changes, the instrument keeps running, rollback brings the
    previous settings back byte for byte."""
    assert inv(project, "settings-sample").returncode == 0
    defaults = project / "instruments" / "defaults.yaml"
    defaults.write_text(defaults.read_text() + f"settings_repo: {project / '.state' / 'sample-settings-repo'}\n")
    commit_all(project, "use the sample settings repository")
    res = inv(project, "reimage", "--instrument=ZOOM")
    assert res.returncode == 0, res.stdout + res.stderr
    ctx = ctx_for(project)
    before, power = _settings(ctx), _power_history(ctx)
    _set_variable(project, "ZOOM", "detector_banks", 17)

    dry = inv(project, "apply-settings", "--instruments=ZOOM", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "configurations/devices/detectors.xml" in dry.stdout and "InstrumentServer" in dry.stdout
    assert "dry run: nothing was changed" in dry.stdout and _settings(ctx) == before

    res = inv(project, "apply-settings", "--instruments=ZOOM", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    after = _settings(ctx)
    changed = sorted(rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel))
    assert "configurations/devices/detectors.xml" in changed and ".imaging/manifest.json" in changed
    assert _guest_text(ctx, "configurations/devices/detectors.xml").count("<bank ") == 17
    assert _power_history(ctx) == power  # never stopped, never started
    events = [(e["service"], e["to"]) for e in _services(ctx)["events"]]
    assert ("InstrumentServer", "stopped") in events and ("InstrumentServer", "running") in events
    assert _services(ctx)["stopped"] == []
    ledger = json.loads((var_dir(ctx) / "imaging" / "settings.json").read_text())
    (entry,) = ledger["applied"]
    assert entry["files"] == changed_without_manifest(changed)
    assert entry["backup"].startswith("imaging/settings-backups/")
    op = facts.last_operation(ctx, ctx.inventory.instrument("ZOOM"))
    assert op is not None and op.kind == "apply-settings"
    assert "apply-settings" in inv(project, "status").stdout

    # the next apply finds nothing to do
    again = inv(project, "apply-settings", "--instruments=ZOOM", "--yes")
    assert again.returncode == 0 and "up to date" in again.stdout

    back = inv(project, "rollback", "--instrument=ZOOM")
    assert back.returncode == 0, back.stdout + back.stderr
    assert _settings(ctx) == before
    assert _power_history(ctx) == power
    assert json.loads((var_dir(ctx) / "imaging" / "settings.json").read_text())["applied"] == []
    assert not (var_dir(ctx) / entry["backup"]).exists()


def changed_without_manifest(changed: list[str]) -> list[str]:
    return [rel for rel in changed if rel != ".imaging/manifest.json"]


def test_a_failure_after_the_files_changed_puts_them_back_and_the_services_run(project: Path) -> None:
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    before = _settings(ctx)
    _set_variable(project, "ZOOM", "detector_banks", 3)

    def hook(step: Step) -> None:
        if step.action == "health_check":
            raise InjectedFault("injected failure of health_check", host=step.host, step=step.action)

    failing = ctx_for(project, fault=hook)
    out = applying.apply_one(failing, "ZOOM")
    assert not out.ok and out.restored, out
    assert _settings(ctx) == before
    assert _services(ctx)["stopped"] == []
    assert json.loads((var_dir(ctx) / "imaging" / "settings.json").read_text())["applied"] == []
    assert applying.apply_one(ctx_for(project), "ZOOM").ok  # and it goes through when nothing fails


def test_apply_settings_refuses_what_it_cannot_do_safely_and_changes_nothing(project: Path) -> None:
    ctx = ctx_for(project)
    zoom = ctx.inventory.instrument("ZOOM")
    with pytest.raises(InputError, match="no release recorded") as err:
        applying.prepare_apply(ctx, [zoom])
    assert "reimage" in err.value.fix
    assert reimaging.reimage(ctx, "ZOOM").ok
    before = _settings(ctx)
    globals_txt = _guest_text(ctx, "globals.txt").encode("utf-8")
    # edited on the instrument: applying would overwrite that
    ctx.providers.lab.guest_write(zoom.host, zoom.vm, f"{SETTINGS}\\globals.txt", b"tuned on the instrument\n")
    _set_variable(project, "ZOOM", "detector_banks", 5)
    with pytest.raises(ImagingError, match="changed on the instrument") as drift:
        applying.prepare_apply(ctx_for(project), [zoom])
    assert "globals.txt" in str(drift.value) and "--capture-drift" in str(drift.value)
    ctx.providers.lab.guest_write(zoom.host, zoom.vm, f"{SETTINGS}\\globals.txt", globals_txt)
    # uncommitted inventory: refused unless --allow-dirty
    f = project / "instruments" / "fleet" / "ZOOM.yaml"
    f.write_text(f.read_text().replace("detector_banks: 5", "detector_banks: 6"))
    with pytest.raises(InputError, match="uncommitted changes") as dirty:
        applying.prepare_apply(ctx_for(project), [zoom])
    assert dirty.value.field == "--allow-dirty"
    commit_all(project, "ZOOM: 6 banks")
    # an instrument that is off is given its settings by a reimage
    ctx.providers.run(Step("stop_vm", zoom.host, {"vm": zoom.vm, "timeout_s": 60}, "stop"))
    with pytest.raises(InputError, match="is not running"):
        applying.prepare_apply(ctx_for(project), [zoom])
    ctx.providers.run(Step("start_vm", zoom.host, {"vm": zoom.vm}, "start"))
    assert _settings(ctx) == before  # every refusal changed nothing


def test_a_hotfix_after_a_settings_change_checks_the_new_settings(project: Path, tmp_path: Path) -> None:
    """The health check of later operations expects the Settings digest the last settings change left."""
    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    _set_variable(project, "ZOOM", "detector_banks", 9)
    assert applying.apply_one(ctx_for(project), "ZOOM").ok
    ctx = ctx_for(project)
    result = hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path, applies=("2026C3.0",)))
    assert not result.failed, result.record["results"]
    # rollback undoes the hotfix, and its health check expects the applied settings, not the reimage's
    choice = rollbacks.choose_rollback(ctx, "ZOOM")
    assert choice.plan is not None and choice.plan.kind == "hotfix-revert"
    assert rollbacks.rollback(ctx, choice).ok
