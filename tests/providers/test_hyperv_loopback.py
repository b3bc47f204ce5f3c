"""The hyperv provider end to end through the real stack, no Windows: HypervProvider -> SessionPool (pypsrp)
-> the loopback WSMan/PSRP endpoint on 127.0.0.1, which answers each rendered script with canned,
marker-framed output and records every script it received (with start and end times).

Plans are built with ``imaging.model.plan.plan_reimage`` straight from the example inventory
(``instruments/examples/hyperv``, hosts pointed at the endpoint), so no lab is involved.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hyperv_frames as frames
import pytest
from loopback_wsman import ErrorSpec, LoopbackWSMan, ReceivedCommand, Reply

from imaging.core.errors import ProviderError
from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.engine.executor import Executor, Outcome
from imaging.images.answer_files import render_instrument_answer
from imaging.model import layout
from imaging.model.inventory import Inventory, load_inventory
from imaging.model.plan import Artifact, Observed, Plan
from imaging.model.steps import Step
from imaging.plans.reimage import ReimageInputs, plan_reimage
from imaging.providers.hyperv.credentials import Credentials, GuestCredential
from imaging.providers.hyperv.provider import MOUNT_ACTIONS, HypervProvider
from imaging.providers.hyperv.scripts import render_script
from imaging.providers.hyperv.session import SessionPool
from imaging.state.journal import FAILED, OK, ROLLED_BACK, Journal

EXAMPLE = Path(__file__).resolve().parents[2] / "instruments" / "examples" / "hyperv"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "powershell"
HOST_CREDS = Credentials("CONTROLS\\svc-imaging", "loopback-host-pw")
GUEST = GuestCredential("Administrator", "loopback-guest-pw")
SCRIPT_MESSAGE = "The disk 'D:\\Imaging\\x.vhdx' is in use by another virtual machine"
ACTION_RE = re.compile(r"^\$ImagingAction = '([a-z_]+)'$", re.MULTILINE)
HANG_LIMIT_S = 2.5  # the time limit given to the failing action when the fault is a hang
FAULTS = ("script_error", "error_record", "terminating", "malformed", "missing_markers", "missing_end",
          "timeout")


def framed(obj: dict[str, Any]) -> list[str]:
    return ["Attached the disk.", RESULT_BEGIN, json.dumps(obj), RESULT_END]


def action_of(script: str) -> str:
    match = ACTION_RE.search(script)
    assert match, "every rendered step script names its action"
    return match.group(1)


def fault_reply(kind: str) -> Reply:
    """The endpoint's answer for one way a step can go wrong."""
    if kind == "script_error":  # the script caught its own error and reported it in the frame
        return Reply(output=framed({"ok": False, "changed": False, "action": "x", "error": SCRIPT_MESSAGE,
                                    "where": "At line:41 char:9\n+         Add-VMHardDiskDrive @params"}))
    if kind == "error_record":  # an error on the error stream (the script did not catch it)
        return Reply(output=framed({"ok": True, "changed": True}),
                     errors=[ErrorSpec(SCRIPT_MESSAGE, 41, "Add-VMHardDiskDrive @params")])
    if kind == "terminating":  # the pipeline itself failed
        return Reply(failed=ErrorSpec(SCRIPT_MESSAGE, 41, "Add-VMHardDiskDrive @params"))
    if kind == "malformed":
        return Reply(output=[RESULT_BEGIN, '{"ok": true, "changed": tru', RESULT_END])
    if kind == "missing_markers":
        return Reply(output=["Attached the disk.", '{"ok": true, "changed": true}'])
    if kind == "missing_end":
        return Reply(output=[RESULT_BEGIN, '{"ok": true, "changed": true}'])
    if kind == "timeout":
        return Reply(hang=True)
    raise AssertionError(kind)


# What the journal and the error must say for each fault (besides host and step).
EXPECTED_TEXT = {
    "script_error": SCRIPT_MESSAGE,
    "error_record": SCRIPT_MESSAGE,
    "terminating": SCRIPT_MESSAGE,
    "malformed": "not valid JSON",
    "missing_markers": "wrote no result",
    "missing_end": "incomplete",
    "timeout": f"timed out after {HANG_LIMIT_S:g}s; the script was stopped",
}


def limits_for(kind: str) -> dict[str, float]:
    """A short limit for the failing action only when the test makes it hang; the default otherwise."""
    return {"attach_disk": HANG_LIMIT_S} if kind == "timeout" else {}


@dataclass
class Script:
    """The endpoint's behaviour: success for every step, except scripted faults (each used once).

    A fault matches an action and, optionally, a text the script must contain (so that the undo of a step
    with the same action is not failed too). ``delays`` make chosen actions take a while (serialisation).
    """

    faults: list[tuple[str, str | None, str | Reply]] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)
    hook: Callable[[str, str, dict[str, Any]], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_once(self, action: str, kind: str | Reply, contains: str | None = None) -> None:
        """Answer the next script of ``action`` (containing ``contains``) with a fault (a name or a Reply)."""
        self.faults.append((action, contains, kind))

    def __call__(self, script: str, params: dict[str, Any]) -> Reply:
        action = action_of(script)
        if self.hook is not None:
            self.hook(action, script, params)
        with self.lock:
            for i, (fault_action, contains, kind) in enumerate(self.faults):
                if fault_action == action and (contains is None or contains in script):
                    del self.faults[i]
                    return kind if isinstance(kind, Reply) else fault_reply(kind)
        return Reply(output=framed({"ok": True, "changed": True, "action": action}),
                     delay_s=self.delays.get(action, 0.0))


def loopback_inventory(port: int) -> Inventory:
    """The example hyperv inventory with every host's address pointed at the loopback endpoint."""
    inv = load_inventory(EXAMPLE)
    hosts = {n: h.model_copy(update={"address": "127.0.0.1", "port": port}) for n, h in inv.hosts.items()}
    return inv.model_copy(update={"hosts": hosts})


LOOPBACK = {"ssl": False, "insecure_loopback": True, "auth": "negotiate", "operation_timeout_s": 1,
            "connect_timeout_s": 2}


def make_provider(inv: Inventory, *, credentials: Any = None, guest: GuestCredential | None = GUEST,
                  **kw: Any) -> HypervProvider:
    pool = SessionPool.from_inventory(inv, connection_overrides=LOOPBACK,
                                      credentials=credentials or (lambda conn: HOST_CREDS))
    return HypervProvider(pool, guest_credential=guest, **kw)


@pytest.fixture
def endpoint() -> Iterator[tuple[LoopbackWSMan, Script]]:
    script = Script()
    with LoopbackWSMan(script) as ep:
        yield ep, script


def reimage_plan(inv: Inventory, name: str = "ALF", op_id: str = "0a1b2c3d4e5f", *,
                 observed: Observed | None = None) -> Plan:
    """A reimage from 2026C2.0 to 2026C3.0 of a running instrument that has every disk, observed through
    get_state's real answer (each disk with its Get-VHD parent) unless given."""
    inst = inv.instrument(name)
    host = inv.host_of(inst)
    old = "2026C2.0-99999999"
    os_old = Artifact("os-ltsc2022-2026C2", "a" * 64, 20 * 1024 ** 3)
    observed = observed or Observed.from_state(frames.get_state("Running", [
        (0, layout.disk_path(host, inst, "os", old), layout.image_path(host, os_old.name, os_old.sha256)),
        (1, layout.disk_path(host, inst, "apps", old), layout.image_path(host, "apps-2026C2.0", "e" * 64)),
        (2, layout.disk_path(host, inst, "settings", old), None), (3, layout.disk_path(host, inst, "var"), None),
        (4, layout.disk_path(host, inst, "data"), None)]))
    x = ReimageInputs(
        inst=inst, host=host, release="2026C3.0", apps_version="2026.3.0",
        os_template=Artifact("os-ltsc2022-2026C3", "b" * 64, 20 * 1024 ** 3),
        apps_image=Artifact("apps-2026C3.0", "c" * 64, 30 * 1024 ** 3),
        settings_files={"instrument.yaml": base64.b64encode(f"name: {inst.name}\n".encode()).decode(),
                        "motion/axes.cfg": base64.b64encode(b"axes=3\r\n").decode()},
        settings_digest="d" * 64, settings_commit="0123456789abcdef0123", observed=observed,
        op_id=op_id, owner="tests", stamp="20261121T101500Z", from_release="2026C2.0",
        answer=render_instrument_answer(inst.vm, inst.identity, templates=TEMPLATES.parent))
    return plan_reimage(x)


def scripts_of(commands: list[ReceivedCommand]) -> list[str]:
    return [c.script for c in commands]


# ------------------------------------------------------------------------------ one step, real stack
def test_success_returns_the_scripts_result_over_one_reused_session(endpoint):
    ep, _ = endpoint
    provider = make_provider(loopback_inventory(ep.port))
    try:
        step = Step("start_vm", "HVHOST01", {"vm": "NDXALF"}, "start")
        assert provider.run(step) == {"ok": True, "changed": True, "action": "start_vm"}
        assert provider.run(step)["changed"] is True
        assert scripts_of(ep.commands) == [render_script("start_vm", {"vm": "NDXALF"})] * 2
        assert ep.shells_created == 1  # the session is reused per host
    finally:
        provider.close()
    assert ep.shells_deleted == 1


@pytest.mark.parametrize("kind", FAULTS)
def test_every_failure_becomes_one_clear_provider_error(endpoint, kind):
    ep, script = endpoint
    script.fail_once("attach_disk", kind)
    provider = make_provider(loopback_inventory(ep.port), timeouts=limits_for(kind))
    step = Step("attach_disk", "HVHOST02", {"vm": "NDXARGUS", "slot": 1, "path": "D:\\Imaging\\a.vhdx"}, "x")
    try:
        with pytest.raises(ProviderError) as info:
            provider.run(step)
        err = info.value
        assert (err.host, err.step) == ("HVHOST02", "attach_disk")
        assert str(err).startswith("host HVHOST02 step attach_disk: ")
        assert EXPECTED_TEXT[kind] in str(err)
        if kind in ("script_error", "error_record", "terminating"):
            assert "line:41" in str(err) or "line 41" in str(err)
        assert err.transient is False  # a script that ran is never retried
        assert len(ep.commands) == 1
        # the host is still usable afterwards (a hung session was replaced, a healthy one reused)
        assert provider.run(step)["changed"] is True
    finally:
        provider.close()


def test_guest_steps_carry_the_credential_as_pipeline_parameters(endpoint):
    ep, _ = endpoint
    provider = make_provider(loopback_inventory(ep.port))
    try:
        provider.run(Step("wait_guest", "HVHOST01", {"vm": "NDXALF", "timeout_s": 60}, "wait"))
    finally:
        provider.close()
    sent = ep.commands[0]
    assert sent.parameters == {"GuestUser": "Administrator", "GuestPassword": "loopback-guest-pw"}
    assert "loopback-guest-pw" not in sent.script


def test_the_pool_follows_the_inventory(endpoint):
    ep, _ = endpoint
    inv = loopback_inventory(ep.port)
    pool = SessionPool.from_inventory(inv, connection_overrides=LOOPBACK)
    assert pool.hosts() == sorted(inv.hosts)
    assert pool._slot("HVHOST01").connection.max_concurrent == inv.hosts["HVHOST01"].max_concurrent == 3
    assert pool._slot("HVHOST04").connection.max_concurrent == 2
    assert pool._slot("HVHOST01").connection.source == str(EXAMPLE / "hosts.yaml")
    pool.close()


def test_a_lab_host_gets_no_session_and_bad_inventory_values_name_hosts_yaml(endpoint):
    from imaging.core.errors import InputError

    ep, _ = endpoint
    inv = loopback_inventory(ep.port)
    lab = inv.hosts["HVHOST05"].model_copy(update={"provider": "lab"})
    inv = inv.model_copy(update={"hosts": {**inv.hosts, "HVHOST05": lab}})
    assert "HVHOST05" not in SessionPool.from_inventory(inv, connection_overrides=LOOPBACK).hosts()
    with pytest.raises(InputError, match=r"hosts.yaml: field 'hosts.HVHOST01.insecure_loopback'"):
        SessionPool.from_inventory(load_inventory(EXAMPLE), connection_overrides={"insecure_loopback": True})


def test_host_credentials_come_from_the_environment_per_host(endpoint, monkeypatch):
    ep, _ = endpoint
    monkeypatch.setenv("IMAGING_HYPERV_USER", "CONTROLS\\svc-all")
    monkeypatch.setenv("IMAGING_HYPERV_PASSWORD", "env-all-pw-1")
    monkeypatch.setenv("IMAGING_HYPERV_HVHOST02_USER", "CONTROLS\\svc-two")
    monkeypatch.setenv("IMAGING_HYPERV_HVHOST02_PASSWORD", "env-two-pw-2")
    provider = HypervProvider.from_inventory(loopback_inventory(ep.port), connection_overrides=LOOPBACK)
    try:
        provider.run(Step("start_vm", "HVHOST01", {"vm": "NDXALF"}, "start"))
        provider.run(Step("start_vm", "HVHOST02", {"vm": "NDXARGUS"}, "start"))
        creds = {h: provider.pool._slot(h).credentials for h in ("HVHOST01", "HVHOST02")}
        assert ep.shells_created == 2 and ep.shells_deleted == 0  # one reused session per host
    finally:
        provider.close()
    assert ep.shells_deleted == 2  # closing the provider closed the pool's sessions
    assert (creds["HVHOST01"].username, creds["HVHOST01"].password) == ("CONTROLS\\svc-all", "env-all-pw-1")
    assert (creds["HVHOST02"].username, creds["HVHOST02"].password) == ("CONTROLS\\svc-two", "env-two-pw-2")


def test_only_transient_failures_are_retried(endpoint):
    ep, script = endpoint
    sleeps: list[float] = []
    provider = HypervProvider.from_inventory(
        loopback_inventory(ep.port), connection_overrides=LOOPBACK, credentials=lambda conn: HOST_CREDS,
        sleep=sleeps.append, jitter=lambda: 0.5)
    step = Step("start_vm", "HVHOST01", {"vm": "NDXALF"}, "start")
    try:
        ep.drop_connections(2, action="Create")  # the host is briefly unreachable: retried, then fine
        assert provider.run(step)["changed"] is True
        assert ep.count("Create") == 3 and len(ep.commands) == 1 and sleeps == [0.5, 1.0]
        script.fail_once("start_vm", "script_error")  # a script that ran and failed: never retried
        with pytest.raises(ProviderError, match="in use by another virtual machine"):
            provider.run(step)
        assert len(ep.commands) == 2 and len(sleeps) == 2
    finally:
        provider.close()


def test_credentials_in_the_inventory_are_refused(tmp_path):
    import shutil

    from imaging.core.errors import ValidationFailed

    copy = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, copy)
    hosts = copy / "hosts.yaml"
    hosts.write_text(hosts.read_text().replace("    auth: kerberos\n", "    auth: kerberos\n    password: x1\n", 1))
    with pytest.raises(ValidationFailed, match=r"hosts\.HVHOST01\.password"):
        load_inventory(copy)


# -------------------------------------------------------------------------- a whole plan, one step fails
def execute(provider: HypervProvider, plan: Plan, tmp_path: Path, op_id: str) -> tuple[Outcome, Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    outcome = Executor(provider, journal, tmp_path / "locks").execute(plan, op_id=op_id)
    return outcome, journal


def expected_undo(plan: Plan, failed: int) -> list[Step]:
    """The executor's promise: the failed step's undo, then every earlier step's undo, in reverse."""
    return [s.undo for s in reversed(plan.steps[: failed + 1]) if s.undo is not None]


@pytest.mark.parametrize("kind", FAULTS)
def test_a_failed_step_rolls_the_plan_back_through_the_real_stack(endpoint, tmp_path, kind):
    ep, script = endpoint
    inv = loopback_inventory(ep.port)
    plan = reimage_plan(inv)
    failed = next(i for i, s in enumerate(plan.steps) if s.action == "attach_disk" and s.inputs["slot"] == 1)
    new_apps = plan.steps[failed].inputs["path"]
    script.fail_once("attach_disk", kind, contains=new_apps)
    provider = make_provider(inv, timeouts=limits_for(kind))
    try:
        outcome, journal = execute(provider, plan, tmp_path, "0a1b2c3d4e5f")
    finally:
        provider.close()

    assert outcome.ok is False and outcome.status == ROLLED_BACK and outcome.restored is True
    assert outcome.failed_step == "attach_disk"
    received = scripts_of(ep.commands)
    do_scripts = [render_script(s.action, s.inputs) for s in plan.steps[: failed + 1]]
    undo = expected_undo(plan, failed)
    assert [u.action for u in undo][:3] == ["detach_disk", "detach_disk", "delete_disk"]
    assert "release_lock" in [u.action for u in undo] and "start_vm" in [u.action for u in undo]
    # everything up to the failure ran once, then exactly the undo scripts arrived, in reverse order
    assert received == do_scripts + [render_script(u.action, u.inputs) for u in undo]

    records = journal.steps("0a1b2c3d4e5f")
    bad = [r for r in records if r.status == FAILED]
    assert len(bad) == 1 and (bad[0].idx, bad[0].phase, bad[0].action) == (failed, "do", "attach_disk")
    assert bad[0].error.startswith("host HVHOST01 step attach_disk: ")
    assert EXPECTED_TEXT[kind] in bad[0].error
    undone = [r for r in records if r.phase == "undo"]
    assert [r.action for r in undone] == [u.action for u in undo] and all(r.status == OK for r in undone)
    op = journal.operation("0a1b2c3d4e5f")
    assert op.status == ROLLED_BACK and "host HVHOST01" in op.error and EXPECTED_TEXT[kind] in op.error


def test_a_whole_plan_succeeds_through_the_real_stack(endpoint, tmp_path):
    ep, _ = endpoint
    inv = loopback_inventory(ep.port)
    plan = reimage_plan(inv)
    provider = make_provider(inv)
    try:
        outcome, journal = execute(provider, plan, tmp_path, "0a1b2c3d4e5f")
    finally:
        provider.close()
    assert outcome.ok and outcome.status == OK
    assert scripts_of(ep.commands) == [render_script(s.action, s.inputs) for s in plan.steps]
    assert ep.shells_created <= inv.hosts["HVHOST01"].max_concurrent
    assert journal.operation("0a1b2c3d4e5f").status == OK


# -------------------------------------------------------------------------------------------- secrets
HOST_SECRET = "Zq7-HostPw-4f1e9c"
GUEST_SECRET = "Gx3-GuestPw-8d2b7a"


def test_no_password_reaches_the_journal_logs_scripts_or_errors(endpoint, tmp_path, monkeypatch, caplog):
    ep, script = endpoint
    monkeypatch.setenv("IMAGING_HYPERV_USER", "CONTROLS\\svc-imaging")
    monkeypatch.setenv("IMAGING_HYPERV_PASSWORD", HOST_SECRET)
    monkeypatch.setenv("IMAGING_GUEST_USER", "Administrator")
    monkeypatch.setenv("IMAGING_GUEST_PASSWORD", GUEST_SECRET)
    caplog.set_level(logging.DEBUG)
    for name in ("pypsrp", "requests", "urllib3", "spnego", "winrm", "imaging"):
        caplog.set_level(logging.DEBUG, logger=name)

    # A careless guest script that puts the password it was given into its error and its result.
    script.fail_once("configure_guest", Reply(output=framed({
        "ok": False, "changed": True, "error": f"mount failed as Administrator with password {GUEST_SECRET}",
        "where": f"At line:9 char:1 {GUEST_SECRET}", "tried": [GUEST_SECRET]})))

    inv = loopback_inventory(ep.port)
    plan = reimage_plan(inv)
    provider = HypervProvider.from_inventory(inv, connection_overrides=LOOPBACK)
    try:
        outcome, journal = execute(provider, plan, tmp_path, "0a1b2c3d4e5f")
        # a host password in a transport error is redacted too
        logging.getLogger("pypsrp.wsman").debug("auth with %s", HOST_SECRET)
    finally:
        provider.close()

    assert outcome.status == ROLLED_BACK and outcome.failed_step == "configure_guest"
    guest_calls = [c for c in ep.commands if action_of(c.script) in ("wait_guest", "configure_guest")]
    assert guest_calls and all(c.parameters["GuestPassword"] == GUEST_SECRET for c in guest_calls)  # it was used
    texts = {
        "journal": journal.all_text(),
        "logs": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "scripts": "\n".join(c.script for c in ep.commands),
        "errors": f"{outcome.error}\n{outcome}",
    }
    assert "Packing PSRP message" in texts["logs"]  # pypsrp really logged the pipelines at DEBUG
    assert "[REDACTED]" in texts["journal"] and "[REDACTED]" in texts["errors"]
    for where, text in texts.items():
        for secret in (HOST_SECRET, GUEST_SECRET):
            assert secret not in text, f"a password reached the {where}"


# --------------------------------------------------------------------------------------- serialisation
def run_in_threads(provider: HypervProvider, plans: list[Plan], tmp_path: Path) -> list[Outcome]:
    journal = Journal(tmp_path / "journal.sqlite")
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def work(plan: Plan, op_id: str) -> None:
        try:
            outcomes.append(Executor(provider, journal, tmp_path / "locks").execute(plan, op_id=op_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p, f"op{i:010d}")) for i, p in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return outcomes


def instrument_of_script(inv: Inventory, script: str) -> str:
    """Which instrument's step a script is (each plan's scripts name its own VM)."""
    for inst in inv.instruments.values():
        if f"'{inst.vm}'" in script or f"\\{inst.vm}\\" in script:
            return inst.name
    raise AssertionError("a script that names no instrument")


def test_mount_steps_of_two_instruments_on_one_host_never_overlap(endpoint, tmp_path):
    ep, script = endpoint
    script.delays = {action: 0.05 for action in MOUNT_ACTIONS} | {"get_state": 0.0}
    inv = loopback_inventory(ep.port)
    plans = [reimage_plan(inv, "ALF", "aaaaaaaa0001"), reimage_plan(inv, "GEM", "bbbbbbbb0002")]
    assert plans[0].host == plans[1].host == "HVHOST01"
    provider = make_provider(inv)
    try:
        outcomes = run_in_threads(provider, plans, tmp_path)
    finally:
        provider.close()
    assert [o.ok for o in outcomes] == [True, True]
    mounts = [c for c in ep.commands if action_of(c.script) in MOUNT_ACTIONS]
    per_instrument = {p.instrument: [c for c in mounts if instrument_of_script(inv, c.script) == p.instrument]
                      for p in plans}
    # var, data and settings disks, two backups, the rescue, the settings files; and GEM's Shared disk
    for plan, mounting in zip(plans, (8, 9), strict=True):
        assert len(per_instrument[plan.instrument]) == sum(s.action in MOUNT_ACTIONS for s in plan.steps) == mounting
    spans = sorted((c.started, c.ended) for c in mounts)
    assert all(end is not None for _, end in spans)
    for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert end <= next_start, "two mount scripts ran at once on one host"


def test_mount_steps_on_different_hosts_may_overlap(endpoint, tmp_path):
    ep, script = endpoint
    meet = threading.Barrier(2, timeout=10)
    met: list[str] = []

    def rendezvous(action: str, body: str, _params: dict[str, Any]) -> None:
        # the first create_disk of each instrument waits here for the other's: only possible if the two
        # hosts' mount steps are not serialised against each other
        if action == "create_disk" and "-var.vhdx" in body:
            try:
                meet.wait()
                met.append(action)
            except threading.BrokenBarrierError:
                pass

    script.hook = rendezvous
    inv = loopback_inventory(ep.port)
    plans = [reimage_plan(inv, "ALF", "aaaaaaaa0001"), reimage_plan(inv, "ARGUS", "bbbbbbbb0002")]
    assert {p.host for p in plans} == {"HVHOST01", "HVHOST02"}
    provider = make_provider(inv)
    try:
        outcomes = run_in_threads(provider, plans, tmp_path)
    finally:
        provider.close()
    assert [o.ok for o in outcomes] == [True, True]
    assert met == ["create_disk", "create_disk"] and not meet.broken


# --- what the real scripts answer (issue 16) -----------------------------------------------------------


def test_frames_are_what_the_scripts_write() -> None:
    """The loopback frames carry exactly the keys the templates set: the base frame, the failure frame and
    get_state's disks (with their parent)."""
    base = set(re.findall(r"(\w+) = ", re.search(r"\$Result = \[ordered\]@\{([^}]*)\}",
                                                  (TEMPLATES / "_base.ps1.j2").read_text()).group(1)))
    prelude = (TEMPLATES / "_prelude.ps1.j2").read_text()
    failing = prelude[prelude.index("function Write-ImagingFailure"):prelude.index("function Initialize")]
    assert set(frames.failure("x", "e")) == base | set(re.findall(r"\$Result\['(\w+)'\]", failing))
    state = (TEMPLATES / "get_state.ps1.j2").read_text()
    disk_keys = set(re.findall(r"(\w+) = ", re.search(r"\[ordered\]@\{ (slot = [^}]*)\}", state).group(1)))
    top = set(re.findall(r"\$Result\['(\w+)'\]", state))
    frame = frames.get_state("Running", [(0, "D:\\x.vhdx", None)])
    assert set(frame) == base | top and set(frame["disks"][0]) == disk_keys == {"slot", "path", "parent"}
    assert set(frames.no_vm()) == set(frame)
    reads = set(re.findall(r"\$Result\['(\w+)'\]", (TEMPLATES / "read_guest_files.ps1.j2").read_text()))
    assert set(frames.guest_files({})) == base | reads


def test_the_real_get_state_answer_plans_the_rescue(endpoint, tmp_path) -> None:
    """Defect 1: fed get_state's real answer for a reimaged instrument, planning sees the OS disk's parent
    (the template) and plans the rescue of user files; before, the script sent no parent and no rescue was
    ever planned on Hyper-V."""
    from imaging.model.plan import Observed

    ep, script = endpoint
    inv = loopback_inventory(ep.port)
    inst = inv.instrument("ALF")
    host = inv.host_of(inst)
    old = "2026C2.0-99999999"
    tpl = layout.image_path(host, "os-ltsc2022-2026C2", "a" * 64)
    disks = [(0, layout.disk_path(host, inst, "os", old), tpl),
             (1, layout.disk_path(host, inst, "apps", old), layout.image_path(host, "apps-2026C2.0", "b" * 64)),
             (2, layout.disk_path(host, inst, "settings", old), None),
             (3, layout.disk_path(host, inst, "var"), None), (4, layout.disk_path(host, inst, "data"), None)]
    script.fail_once("get_state", Reply(output=framed(frames.get_state("Running", disks))))
    provider = make_provider(inv)
    try:
        observed = Observed.from_state(provider.run(Step("get_state", host.name, {"vm": inst.vm}, "look")))
    finally:
        provider.close()
    assert observed.parents[0] == tpl and observed.parents[3] is None
    plan = reimage_plan(inv, "ALF", observed=observed)
    [rescue] = [s for s in plan.steps if s.action == "rescue_user_files"]
    assert rescue.inputs["template_path"] == tpl and rescue.inputs["os_path"] == disks[0][1]


def test_a_disk_file_another_process_holds_is_tried_again(endpoint) -> None:
    """Defect 6: ObjectInUse from Mount-VHD/Get-VHD is retried with backoff (every action is idempotent),
    then reported, naming what usually holds a VHDX, if it persists."""
    ep, script = endpoint
    inv = loopback_inventory(ep.port)
    provider = make_provider(inv)
    provider.in_use_backoff_s = 0.01
    disk = Step("create_disk", "HVHOST01", {"path": "D:\\Imaging\\instruments\\NDXALF\\NDXALF-var.vhdx",
                                            "size_gb": 60, "label": "Var", "role": "var"}, "create")
    try:
        for _ in range(2):
            script.fail_once("create_disk", Reply(output=framed(frames.in_use("create_disk"))))
        assert provider.run(disk)["ok"] is True
        assert [action_of(c.script) for c in ep.commands].count("create_disk") == 3
        ep.commands.clear()
        for _ in range(provider.in_use_attempts):
            script.fail_once("create_disk", Reply(output=framed(frames.in_use("create_disk"))))
        with pytest.raises(ProviderError, match=r"still in use by another process after 5 tries"):
            provider.run(disk)
        # a failure of another kind, or one that changed something first, is never run twice
        ep.commands.clear()
        script.fail_once("create_disk", Reply(output=framed({**frames.in_use("create_disk"), "changed": True})))
        with pytest.raises(ProviderError, match="being used by another process"):
            provider.run(disk)
        script.fail_once("create_disk", Reply(output=framed(frames.failure("create_disk", "Access is denied."))))
        with pytest.raises(ProviderError, match="Access is denied"):
            provider.run(disk)
        assert [action_of(c.script) for c in ep.commands].count("create_disk") == 2
    finally:
        provider.close()


def test_a_running_instruments_own_record_and_settings_are_read_in_its_guest(endpoint) -> None:
    """Defects 2 and 5 on the real transport: with the VM running, the record on Var and the deployed
    settings are read over PowerShell Direct (read_guest_files), never by mounting a disk the VM holds."""
    import json as jsonlib

    from imaging.model.plan import Observed
    from imaging.ops import facts
    from imaging.ops.reimage import deployed_settings

    ep, script = endpoint
    inv = loopback_inventory(ep.port)
    inst = inv.instrument("ALF")
    host = inv.host_of(inst)
    disks = [(r, layout.disk_path(host, inst, role, "2026C3.0-0a1b2c3d" if role in ("os", "apps", "settings")
                                  else None), None)
             for role, r in (("os", 0), ("apps", 1), ("settings", 2), ("var", 3), ("data", 4))]
    observed = Observed.from_state(frames.get_state("Running", disks))
    record = {"release": "2026C3.0", "operation": "0a1b2c3d4e5f", "hotfixes": []}
    where = "C:\\Instrument\\Var\\imaging\\record.json"
    script.fail_once("read_guest_files", Reply(output=framed(frames.guest_files(
        {where: {"": jsonlib.dumps(record).encode()}}))))
    script.fail_once("read_guest_files", Reply(output=framed(frames.guest_files(
        {"C:\\Instrument\\Settings": {"labview/dae.ini": b"[DAE]\r\n", ".imaging/manifest.json": b'{"files": {}}'}}))))
    provider = make_provider(inv)
    ctx = type("Ctx", (), {"providers": provider, "inventory": inv})()
    try:
        assert facts.instrument_record(ctx, inst, observed) == record
        settings = deployed_settings(ctx, inst, observed)
    finally:
        provider.close()
    assert settings is not None and settings.files == {"labview/dae.ini": b"[DAE]\r\n"}
    sent = [c.script for c in ep.commands]
    assert [action_of(s) for s in sent] == ["read_guest_files", "read_guest_files"]
    assert f"'{where}'" in sent[0] and "'C:\\Instrument\\Settings'" in sent[1]


def test_the_answer_file_gets_its_accounts_as_parameters_never_as_text(endpoint, monkeypatch) -> None:
    """Defect 3 on the real transport: the new OS disk's answer file is written by inject_first_boot with
    the guest credential (and, for a domain, the join credential) passed as pipeline parameters; the script
    text and the step inputs hold only the markers."""
    from imaging.images.answer_files import render_instrument_answer
    from imaging.model.inventory import IdentitySpec

    ep, _ = endpoint
    inv = loopback_inventory(ep.port)
    monkeypatch.setenv("IMAGING_DOMAIN_JOIN_USER", "CONTROLS\\join-svc")
    monkeypatch.setenv("IMAGING_DOMAIN_JOIN_PASSWORD", "join-pw-loopback")
    answer = render_instrument_answer("NDXALF", IdentitySpec(domain="controls.example.org"),
                                      templates=TEMPLATES.parent)
    assert "@@GUEST_PASSWORD@@" in answer and "<ComputerName>NDXALF</ComputerName>" in answer
    step = Step("inject_first_boot", "HVHOST01", {"path": "D:\\Imaging\\instruments\\NDXALF\\NDXALF-os-g1.vhdx",
                                                  "volumes": [], "answer": answer}, "answer file")
    provider = make_provider(inv)
    try:
        provider.run(step)
    finally:
        provider.close()
    [sent] = ep.commands
    assert sent.parameters == {"GuestUser": "Administrator", "GuestPassword": "loopback-guest-pw",
                               "JoinUser": "CONTROLS\\join-svc", "JoinPassword": "join-pw-loopback"}
    assert "loopback-guest-pw" not in sent.script and "join-pw-loopback" not in sent.script
    assert "SecurityElement]::Escape" in sent.script and "Panther" in sent.script


def test_a_settings_change_fails_in_the_guest_and_its_files_are_put_back_through_the_real_stack(endpoint,
                                                                                                 tmp_path) -> None:
    """Issue 17, item 3 on the real transport: an apply-settings plan runs as guest scripts with the guest
    credential as parameters; when apply_settings fails, restore_settings and the service restarts are sent
    back in reverse, and the files travel inside the request (base64), never as script text of their own."""
    import base64 as b64
    import hashlib

    from imaging.core.hashing import manifest_digest
    from imaging.plans.settings import SettingsChange, plan_apply_settings

    ep, script = endpoint
    inv = loopback_inventory(ep.port)
    inst = inv.instrument("ALF")
    data = "[DAE]\r\nDetector Banks = $(whoami) `n 'x'\r\n".encode("utf-16")
    files = {"labview/dae.ini": hashlib.sha256(data).hexdigest()}
    health = {"vm": inst.vm, "expect_apps_version": "2026C3.0", "links": [], "expect_settings_sha256": "1" * 64}
    change = SettingsChange(inst=inst, host=inv.host_of(inst), release="2026C3.0",
                            files={"labview/dae.ini": b64.b64encode(data).decode()}, remove=(),
                            manifest={"files": files, "digest": manifest_digest(files)}, digest_before="2" * 64,
                            services=("InstrumentServer",), health=health, commit=None, op_id="0a1b2c3d4e5f",
                            owner="jbloggs", stamp="20261130T040000Z")
    plan = plan_apply_settings(change)
    script.fail_once("apply_settings", "script_error")
    provider = make_provider(inv)
    try:
        outcome, journal = execute(provider, plan, tmp_path, "0a1b2c3d4e5f")
    finally:
        provider.close()
    assert not outcome.ok and outcome.restored and outcome.failed_step == "apply_settings"
    sent = [action_of(s) for s in scripts_of(ep.commands)]
    assert sent == ["acquire_lock", "stop_services", "apply_settings", "restore_settings", "start_services",
                    "release_lock"]
    applied = scripts_of(ep.commands)[2]
    assert GUEST.password not in applied and b64.b64encode(data).decode() in applied
    assert all(c.parameters.get("GuestPassword") == GUEST.password for c in ep.commands
               if action_of(c.script) in ("stop_services", "apply_settings", "restore_settings", "start_services"))
