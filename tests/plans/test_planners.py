"""The hotfix and rollback planners, called directly: pure functions from inputs to ordered steps."""

from __future__ import annotations

from pathlib import Path

from imaging.model.hotfixes import Hotfix, HotfixFile
from imaging.model.inventory import SLOTS, load_inventory
from imaging.model.plan import Observed
from imaging.plans.hotfix import HotfixInputs, plan_hotfix, plan_revert_hotfix
from imaging.plans.rollback import RollbackInputs, plan_rollback

ROOT = Path(__file__).resolve().parents[2]
INV = load_inventory(ROOT / "instruments")
ZOOM = INV.instrument("ZOOM")
HOST = INV.host_of(ZOOM)
HOTFIX = Hotfix(id="HF-T-1", description="fix", applies_to=("2026C3.0",),
                files=(HotfixFile("server/bin/x.dll", "0" * 64),), restart=("Server",))
HEALTH = {"vm": ZOOM.vm, "expect_apps_version": "2026.3.0", "links": [], "expect_settings_sha256": "1" * 64}


def _hotfix_inputs(package: str | None = r"E:\Imaging\hotfixes\HF-T-1") -> HotfixInputs:
    return HotfixInputs(inst=ZOOM, host=HOST, hotfix=HOTFIX, release="2026C3.0", apps_generation="gen-1",
                        package_path=package, health=HEALTH, op_id="op1", owner="tester", stamp="20261129T000000Z")


def test_hotfix_plan_locks_first_unlocks_last_never_stops_the_vm_and_can_be_undone() -> None:
    plan = plan_hotfix(_hotfix_inputs())
    actions = [s.action for s in plan.steps]
    assert actions[0] == "acquire_lock" and actions[-1] == "release_lock"
    assert "apply_hotfix" in actions and "health_check" in actions
    assert "stop_vm" not in actions and "detach_disk" not in actions
    apply = next(s for s in plan.steps if s.action == "apply_hotfix")
    assert apply.undo is not None and apply.undo.action == "revert_hotfix"
    assert apply.inputs["package_path"] == r"E:\Imaging\hotfixes\HF-T-1"
    assert plan.kind == "hotfix" and plan.instrument == "ZOOM"


def test_revert_plan_reverts_the_named_hotfix_without_a_package() -> None:
    plan = plan_revert_hotfix(_hotfix_inputs(package=None))
    actions = [s.action for s in plan.steps]
    assert "revert_hotfix" in actions and "apply_hotfix" not in actions
    assert actions[0] == "acquire_lock" and actions[-1] == "release_lock"


def test_rollback_plan_reattaches_the_previous_generation_and_leaves_var_and_data() -> None:
    base = rf"{HOST.storage_root}\instruments\{ZOOM.vm}"
    now = {SLOTS["os"]: rf"{base}\os-new.vhdx", SLOTS["apps"]: rf"{base}\apps-new.vhdx",
           SLOTS["settings"]: rf"{base}\settings-new.vhdx", SLOTS["var"]: rf"{base}\var.vhdx",
           SLOTS["data"]: rf"{base}\data.vhdx"}
    previous = {SLOTS["os"]: rf"{base}\os-old.vhdx", SLOTS["apps"]: rf"{base}\apps-old.vhdx",
                SLOTS["settings"]: rf"{base}\settings-old.vhdx"}
    plan = plan_rollback(RollbackInputs(
        inst=ZOOM, host=HOST, observed=Observed(exists=True, power="Running", disks=now, parents={}),
        previous_disks=previous, previous_power="Running", previous_release="2026C3.0",
        previous_generation="gen-0", rolled_away="2026C3.1", health=HEALTH, record={"release": "2026C3.0"},
        undone_op="op0", op_id="op1", owner="tester"))
    attached = [s.inputs["path"] for s in plan.steps if s.action == "attach_disk"]
    detached = [s.inputs["path"] for s in plan.steps if s.action == "detach_disk"]
    assert sorted(attached) == sorted(previous.values())
    assert now[SLOTS["var"]] not in detached and now[SLOTS["data"]] not in detached
    assert plan.from_release == "2026C3.1" and plan.to_release == "2026C3.0"
    assert [s.action for s in plan.steps].index("stop_vm") < [s.action for s in plan.steps].index("attach_disk")
