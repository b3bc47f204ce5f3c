"""Opt-in acceptance tests against a real Hyper-V host (see docs/hyperv.md, "Acceptance tests").

Collected always, skipped unless these are set:
  IMAGING_ACCEPT_HOST       a host name from the inventory (provider: hyperv) the tests may use
  IMAGING_HYPERV_USER / IMAGING_HYPERV_PASSWORD   the account the transport signs in with (or the per-host
                            IMAGING_HYPERV_<HOST>_USER / _PASSWORD, or IMAGING_HYPERV_CERT_PEM / _KEY_PEM)
and, for the full reimage, IMAGING_ACCEPT_REIMAGE=1 plus IMAGING_ACCEPT_INSTRUMENT (a throwaway instrument
defined in the inventory on that host) and IMAGING_GUEST_USER / IMAGING_GUEST_PASSWORD.
The inventory is the one the tool uses (IMAGING_ROOT / IMAGING_INVENTORY). Everything these tests create
is named imaging-accept-<random> and removed at the end, also on failure.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from imaging.core.errors import ProviderError
from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.core.quoting import ps_literal
from imaging.model.steps import Step
from imaging.providers.hyperv.provider import HypervProvider

HOST = os.environ.get("IMAGING_ACCEPT_HOST", "")
_KEY = re.sub(r"[^A-Z0-9]", "_", HOST.upper())
CONFIGURED = bool(HOST) and any(
    os.environ.get(user) and os.environ.get(password)
    for user, password in (("IMAGING_HYPERV_USER", "IMAGING_HYPERV_PASSWORD"),
                           (f"IMAGING_HYPERV_{_KEY}_USER", f"IMAGING_HYPERV_{_KEY}_PASSWORD"),
                           ("IMAGING_HYPERV_CERT_PEM", "IMAGING_HYPERV_KEY_PEM")))
REIMAGE = (os.environ.get("IMAGING_ACCEPT_REIMAGE") == "1"
           and bool(os.environ.get("IMAGING_ACCEPT_INSTRUMENT")))

pytestmark = [
    pytest.mark.acceptance,
    pytest.mark.skipif(not CONFIGURED, reason="needs IMAGING_ACCEPT_HOST and IMAGING_HYPERV_USER / "
                                              "IMAGING_HYPERV_PASSWORD (a real Hyper-V host; docs/hyperv.md)"),
]


@pytest.fixture(scope="module")
def context() -> Iterator[Any]:
    from imaging.ops.reimage import load_context

    ctx = load_context()
    host = ctx.inventory.hosts.get(HOST)
    assert host is not None, f"IMAGING_ACCEPT_HOST={HOST} is not a host of the inventory"
    assert host.provider == "hyperv", f"host {HOST} has provider {host.provider}, not hyperv"
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def provider(context: Any) -> Iterator[HypervProvider]:
    p = HypervProvider.from_inventory(context.inventory)
    try:
        yield p
    finally:
        p.close()


def run(provider: HypervProvider, action: str, **inputs: Any) -> dict[str, Any]:
    return provider.run(Step(action=action, host=HOST, inputs=inputs, summary=f"acceptance {action}"))


def test_get_state_of_a_vm_that_does_not_exist(provider: HypervProvider) -> None:
    state = run(provider, "get_state", vm=f"imaging-accept-{secrets.token_hex(4)}")
    assert state == {**state, "changed": False, "exists": False, "disks": []}


def test_throwaway_vm_disk_cycle(provider: HypervProvider, context: Any) -> None:
    host = context.inventory.hosts[HOST]
    vm = f"imaging-accept-{secrets.token_hex(4)}"
    folder = f"{host.storage_root}\\acceptance\\{vm}"
    disk = f"{folder}\\{vm}-settings-1.vhdx"
    try:
        vm_inputs = {"vm": vm, "generation": 2, "memory_mb": 512, "cpus": 1, "switch": host.switch}
        assert run(provider, "ensure_vm", **vm_inputs)["changed"] is True
        assert run(provider, "ensure_vm", **vm_inputs)["changed"] is False
        state = run(provider, "get_state", vm=vm)
        assert (state["exists"], state["power"], state["disks"]) == (True, "Off", [])

        disk_inputs = {"path": disk, "size_gb": 1, "label": "AcceptSettings", "role": "settings"}
        assert run(provider, "create_disk", **disk_inputs)["changed"] is True
        assert run(provider, "create_disk", **disk_inputs)["changed"] is False

        assert run(provider, "attach_disk", vm=vm, slot=2, path=disk)["changed"] is True
        assert run(provider, "attach_disk", vm=vm, slot=2, path=disk)["changed"] is False
        assert run(provider, "get_state", vm=vm)["disks"] == [{"slot": 2, "path": disk, "parent": None}]
        with pytest.raises(ProviderError, match="attached"):
            run(provider, "delete_disk", path=disk, role="settings")

        assert run(provider, "detach_disk", vm=vm, slot=2, path=disk)["changed"] is True
        assert run(provider, "detach_disk", vm=vm, slot=2, path=disk)["changed"] is False
        assert run(provider, "delete_disk", path=disk, role="settings")["changed"] is True
        assert run(provider, "delete_disk", path=disk, role="settings")["changed"] is False
    finally:
        _remove_throwaway(provider, vm, folder)


def _remove_throwaway(provider: HypervProvider, vm: str, folder: str) -> None:
    """Remove the test VM and its folder; not a catalogue action, so a small script built with ps_literal."""
    script = "\n".join([
        "$ErrorActionPreference = 'Stop'",
        f"$vm = {ps_literal(vm)}",
        f"$folder = {ps_literal(folder)}",
        "$found = Get-VM -Name $vm -ErrorAction SilentlyContinue",
        "if ($null -ne $found) {",
        "    Stop-VM -VM $found -TurnOff -Force -ErrorAction SilentlyContinue",
        "    Get-VMHardDiskDrive -VM $found | Remove-VMHardDiskDrive",
        "    Remove-VM -VM $found -Force",
        "}",
        "if (Test-Path -LiteralPath $folder) { Remove-Item -LiteralPath $folder -Recurse -Force }",
        f"Write-Output {ps_literal(RESULT_BEGIN)}",
        "Write-Output '{\"changed\": true}'",
        f"Write-Output {ps_literal(RESULT_END)}",
        "",
    ])
    provider.pool.run_script(HOST, script, step="acceptance cleanup", timeout_s=300)


@pytest.mark.skipif(not REIMAGE, reason="needs IMAGING_ACCEPT_REIMAGE=1 and IMAGING_ACCEPT_INSTRUMENT "
                                         "(a throwaway instrument)")
def test_full_reimage_of_a_throwaway_instrument(context: Any, provider: HypervProvider) -> None:
    from imaging.ops.reimage import reimage

    name = os.environ["IMAGING_ACCEPT_INSTRUMENT"]
    inst = context.inventory.instrument(name)
    assert inst.host == HOST, f"{name} lives on {inst.host}, not on IMAGING_ACCEPT_HOST={HOST}"
    outcome = reimage(context, name)
    assert outcome.ok, f"reimage of {name} failed: {outcome}"
    state = run(provider, "get_state", vm=inst.vm)
    assert state["power"] == "Running"
    assert [d["slot"] for d in state["disks"]][:3] == [0, 1, 2]
