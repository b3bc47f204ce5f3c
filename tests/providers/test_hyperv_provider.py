"""The hyperv provider against a fake session pool: results, every failure path, and the mount lock.

The fake pool parses output with the transport's own ``parse_result``, as the real ``SessionPool`` does;
tests/providers/test_hyperv_loopback.py runs the same provider over the real pool and the loopback endpoint.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imaging.core.errors import InputError, LockHeld, ProviderError
from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.core.redaction import REDACTED
from imaging.model.steps import ACTIONS, Step
from imaging.providers.hyperv.credentials import GuestCredential, Secret
from imaging.providers.hyperv.provider import MOUNT_ACTIONS, HypervProvider
from imaging.providers.hyperv.results import parse_result

SAMPLES = json.loads((Path(__file__).parents[1] / "golden" / "powershell" / "_inputs.json").read_text())


@pytest.fixture(autouse=True)
def _join_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample answer file joins a domain: its step needs the join credential from the environment."""
    monkeypatch.setenv("IMAGING_DOMAIN_JOIN_USER", "CONTROLS\\join-svc")
    monkeypatch.setenv("IMAGING_DOMAIN_JOIN_PASSWORD", "join-pw-tests")


def step(action: str, host: str = "HVHOST01") -> Step:
    return Step(action=action, host=host, inputs=SAMPLES[action], summary=f"test {action}")


def framed(obj: Any) -> list[str]:
    return ["some progress text", RESULT_BEGIN, json.dumps(obj), RESULT_END]


@dataclass
class Result:
    data: dict[str, Any]


@dataclass
class FakePool:
    """A test double with the transport's run_script/mount_lock signatures; records every call."""

    output: list[str] | None = None
    error: BaseException | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    inside: dict[str, int] = field(default_factory=dict)
    overlap: list[str] = field(default_factory=list)
    barrier: threading.Barrier | None = None
    guard: threading.Lock = field(default_factory=threading.Lock)
    lock_taken: list[str] = field(default_factory=list)

    def mount_lock(self, host: str) -> threading.Lock:
        with self.guard:
            self.lock_taken.append(host)
            return self.locks.setdefault(host, threading.Lock())

    def run_script(self, host: str, script: str, *, step: str, timeout_s: float,
                   parameters: Mapping[str, Any] | None = None) -> Result:
        with self.guard:
            self.calls.append({"host": host, "script": script, "step": step, "timeout_s": timeout_s,
                               "parameters": parameters})
            self.inside[host] = self.inside.get(host, 0) + 1
            if self.inside[host] > 1:
                self.overlap.append(host)
        try:
            if self.barrier is not None:
                # Wait for the other thread; a lock that serialises us makes the wait time out (broken).
                with contextlib.suppress(threading.BrokenBarrierError):
                    self.barrier.wait(timeout=2)
            if self.error is not None:
                raise self.error
            output = list(self.output if self.output is not None else framed({"changed": True}))
            return Result(parse_result(output, host=host, step=step))
        finally:
            with self.guard:
                self.inside[host] -= 1


CRED = GuestCredential("imaging-svc", "s3cret'$(x)")


def test_success_returns_the_parsed_result_and_passes_the_rendered_script():
    pool = FakePool(output=framed({"ok": True, "changed": False, "exists": True, "power": "Off",
                                   "disks": []}))
    result = HypervProvider(pool).run(step("get_state"))
    assert result["changed"] is False and result["power"] == "Off"
    call = pool.calls[0]
    assert call["host"] == "HVHOST01" and call["step"] == "get_state" and call["parameters"] is None
    assert "$Vm = 'NDXZOOM'" in call["script"]


def test_guest_actions_get_the_credential_as_parameters_never_in_the_script():
    pool = FakePool()
    HypervProvider(pool, guest_credential=CRED).run(step("configure_guest"))
    call = pool.calls[0]
    assert set(call["parameters"]) == {"GuestUser", "GuestPassword"}
    assert call["parameters"]["GuestUser"] == "imaging-svc"
    secret = call["parameters"]["GuestPassword"]
    assert isinstance(secret, Secret) and secret.value == "s3cret'$(x)" and "s3cret" not in repr(secret)
    assert "s3cret" not in call["script"] and "imaging-svc" not in call["script"]
    assert call["script"].startswith("param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, "
                                      "[string] $JoinPassword)")


def test_guest_action_without_credential_is_refused_before_running():
    pool = FakePool()
    with pytest.raises(ProviderError, match="IMAGING_GUEST_USER") as info:
        HypervProvider(pool).run(step("wait_guest"))
    assert info.value.host == "HVHOST01" and info.value.step == "wait_guest"
    assert pool.calls == []


def test_guest_credential_is_asked_for_once_when_the_first_guest_step_runs():
    asked: list[str] = []

    def source() -> GuestCredential:
        asked.append("asked")
        return GuestCredential.resolve({}, interactive=True, ask_user=lambda text: "typed-guest",
                                       prompt=lambda text: "typed-guest-pw")

    pool = FakePool()
    provider = HypervProvider(pool, guest_credential_source=source)
    provider.run(step("get_state"))
    assert asked == []  # a host step never asks
    provider.run(step("wait_guest"))
    provider.run(step("health_check"))
    assert asked == ["asked"]
    assert pool.calls[-1]["parameters"]["GuestPassword"].value == "typed-guest-pw"


def test_guest_credential_without_env_or_terminal_names_the_variables():
    def source() -> GuestCredential:
        return GuestCredential.resolve({}, interactive=False)

    pool = FakePool()
    with pytest.raises(ProviderError, match="IMAGING_GUEST_PASSWORD") as info:
        HypervProvider(pool, guest_credential_source=source).run(step("configure_guest"))
    assert info.value.step == "configure_guest" and pool.calls == []


def test_a_script_error_that_echoes_a_secret_is_redacted():
    secret = "Echoed-Guest-Pw-42"
    cred = GuestCredential("svc", secret)  # registers the secret for redaction
    pool = FakePool(output=framed({"ok": False, "changed": False, "error": f"logon failed with {secret}",
                                   "where": f"At line:3 char:1 + {secret}"}))
    with pytest.raises(ProviderError) as info:
        HypervProvider(pool, guest_credential=cred).run(step("wait_guest"))
    assert secret not in str(info.value) and REDACTED in str(info.value)
    assert secret not in json.dumps(info.value.result)


def test_guest_credential_from_env_and_hidden_in_repr():
    assert GuestCredential.from_env({}) is None
    cred = GuestCredential.from_env({"IMAGING_GUEST_USER": "u", "IMAGING_GUEST_PASSWORD": "pw-x"})
    assert cred == GuestCredential("u", "pw-x") and "pw-x" not in repr(cred)


def test_script_error_becomes_provider_error_with_its_message():
    pool = FakePool(output=framed({"ok": False, "changed": False, "error": "refusing to delete X: var disks",
                                   "where": "At line:52 char:9\n+ throw"}))
    with pytest.raises(ProviderError) as info:
        HypervProvider(pool).run(step("delete_disk"))
    err = info.value
    assert (err.host, err.step, err.transient) == ("HVHOST01", "delete_disk", False)
    assert "refusing to delete X" in str(err) and "host HVHOST01" in str(err) and "At line:52" in str(err)
    assert err.result["changed"] is False  # the caller learns whether the failed step changed anything


def test_lock_held_by_another_operation_becomes_lock_held():
    pool = FakePool(output=framed({"ok": False, "changed": False, "held_by": {"op_id": "other"},
                                   "error": "instrument NDXZOOM is locked by x"}))
    with pytest.raises(LockHeld, match="locked by x"):
        HypervProvider(pool).run(step("acquire_lock"))


@pytest.mark.parametrize("output, needle", [
    (["no markers at all", "PS> done"], "no result"),
    ([RESULT_BEGIN, '{"changed": tru', RESULT_END], "not valid JSON"),
    ([RESULT_BEGIN, '["changed"]', RESULT_END], "must be a JSON object"),
    ([RESULT_BEGIN, '{"ok": true}', RESULT_END], "boolean 'changed'"),
    ([RESULT_BEGIN, '{"changed": true}'], "incomplete"),
    ([RESULT_END, '{"changed": true}', RESULT_BEGIN], "incomplete"),
    (framed({"changed": True}) + framed({"changed": False}), "2 results"),
])
def test_missing_or_malformed_output_becomes_provider_error(output, needle):
    pool = FakePool(output=output)
    with pytest.raises(ProviderError, match=needle) as info:
        HypervProvider(pool).run(step("start_vm", host="HVHOST07"))
    assert info.value.host == "HVHOST07" and info.value.step == "start_vm"
    assert "host HVHOST07 step start_vm" in str(info.value)


@pytest.mark.parametrize("error, needle, transient", [
    (TimeoutError("operation timed out"), "no result within", True),
    (ConnectionResetError("reset by peer"), "lost the connection", True),
    (RuntimeError("WSManFault 0x803381A6"), "transport failed: RuntimeError", False),
    (ProviderError("shell quota exceeded", transient=True), "shell quota exceeded", True),
])
def test_transport_failures_become_provider_errors_naming_host_and_step(error, needle, transient):
    pool = FakePool(error=error)
    with pytest.raises(ProviderError, match=needle) as info:
        HypervProvider(pool).run(step("stop_vm"))
    assert (info.value.host, info.value.step, info.value.transient) == ("HVHOST01", "stop_vm", transient)


def test_provider_error_that_already_names_host_and_step_passes_unchanged():
    original = ProviderError("WinRM said no", host="HVHOST01", step="stop_vm", transient=True)
    with pytest.raises(ProviderError) as info:
        HypervProvider(FakePool(error=original)).run(step("stop_vm"))
    assert info.value is original


def test_timeouts_are_per_action_and_include_the_step_wait():
    pool = FakePool()
    provider = HypervProvider(pool, timeouts={"get_state": 7})
    provider.run(step("get_state"))
    provider.run(step("stop_vm"))
    assert pool.calls[0]["timeout_s"] == 7
    assert pool.calls[1]["timeout_s"] == provider.timeouts["stop_vm"] + SAMPLES["stop_vm"]["timeout_s"]
    assert set(provider.timeouts) == set(ACTIONS)


def test_bad_inputs_are_refused_before_anything_runs():
    pool = FakePool()
    bad = Step(action="delete_disk", host="HVHOST01", summary="bad",
               inputs={"path": "D:\\Imaging\\..\\x.vhdx", "role": "os"})
    with pytest.raises(InputError, match="path"):
        HypervProvider(pool).run(bad)
    assert pool.calls == []


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_only_mount_actions_take_the_mount_lock(action):
    pool = FakePool()
    HypervProvider(pool, guest_credential=CRED).run(step(action))
    assert pool.lock_taken == (["HVHOST01"] if action in MOUNT_ACTIONS else [])


def _run_two(pool: FakePool, actions: list[str], hosts: list[str]) -> None:
    provider = HypervProvider(pool, guest_credential=CRED)
    errors: list[BaseException] = []

    def work(action: str, host: str) -> None:
        try:
            provider.run(step(action, host=host))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(a, h)) for a, h in zip(actions, hosts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_mount_actions_on_one_host_never_overlap():
    pool = FakePool(barrier=threading.Barrier(2))
    _run_two(pool, ["create_disk", "backup_volume"], ["HVHOST01", "HVHOST01"])
    assert pool.overlap == [] and len(pool.calls) == 2


def test_mount_actions_on_different_hosts_may_overlap():
    pool = FakePool(barrier=threading.Barrier(2))
    _run_two(pool, ["write_settings", "rescue_user_files"], ["HVHOST01", "HVHOST02"])
    assert len(pool.calls) == 2
    # Both threads met at the barrier inside run_script, which is only possible without a shared lock.
    assert not pool.barrier.broken


def test_non_mount_actions_on_one_host_are_not_serialised():
    pool = FakePool(barrier=threading.Barrier(2))
    _run_two(pool, ["get_state", "attach_disk"], ["HVHOST01", "HVHOST01"])
    assert pool.overlap == ["HVHOST01"]
