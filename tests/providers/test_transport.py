"""The PowerShell-remoting transport, against the loopback WSMan/PSRP endpoint in loopback_wsman.py."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading

import pytest
from loopback_wsman import ErrorSpec, LoopbackWSMan, Reply

from imaging.core.errors import InputError, ProviderError
from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.core.redaction import REDACTED
from imaging.providers.hyperv.connection import Connection
from imaging.providers.hyperv.credentials import Credentials, Secret
from imaging.providers.hyperv.results import parse_result
from imaging.providers.hyperv.session import SessionPool, wsman_kwargs

CREDS = {"HV1": Credentials("svc-imaging", "not-the-real-one")}


def result_lines(payload: str) -> list[str]:
    return ["free text the transport must ignore", RESULT_BEGIN, payload, RESULT_END]


def ok(script: str, params: dict) -> Reply:
    return Reply(output=result_lines(json.dumps({"changed": False, "echo": len(script)})))


def loopback(port: int, **kw) -> Connection:
    kw.setdefault("operation_timeout_s", 2)
    kw.setdefault("connect_timeout_s", 2)
    return Connection(host="HV1", address="127.0.0.1", port=port, ssl=False, insecure_loopback=True, **kw)


class Sleeps:
    """Stands in for time.sleep in retry tests: records the back-off instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def endpoint():
    with LoopbackWSMan(ok) as ep:
        yield ep


# ------------------------------------------------------------------------------------------- Connection
def test_basic_auth_is_refused():
    with pytest.raises(InputError, match="Basic authentication"):
        Connection(host="HV1", address="hv1.example.org", auth="basic")


def test_plain_http_without_encryption_is_refused():
    with pytest.raises(InputError, match="plain HTTP without message encryption") as err:
        Connection(host="HV1", address="hv1.example.org", port=5985, ssl=False, message_encryption="never")
    assert "hosts.HV1.message_encryption" in str(err.value)


def test_plain_http_with_message_encryption_is_accepted():
    conn = Connection(host="HV1", address="hv1.example.org", port=5985, ssl=False, auth="kerberos",
                      message_encryption="always")
    assert wsman_kwargs(conn, Credentials())["encryption"] == "always"


@pytest.mark.parametrize("auth", ["negotiate", "ntlm", "kerberos"])
def test_plain_http_that_does_not_say_always_encrypt_is_refused(auth):
    with pytest.raises(InputError, match="plain HTTP is accepted only when every message is encrypted") as err:
        Connection(host="HV1", address="hv1.example.org", port=5985, ssl=False, auth=auth)
    assert "hosts.HV1.message_encryption" in str(err.value) and "ssl: true" in str(err.value)


def test_certificate_auth_needs_https():
    with pytest.raises(InputError, match="certificate authentication needs HTTPS"):
        Connection(host="HV1", address="hv1.example.org", ssl=False, auth="certificate")


def test_unknown_auth_is_refused():
    with pytest.raises(InputError, match="unknown authentication method"):
        Connection(host="HV1", address="hv1.example.org", auth="digest")


def test_cert_validation_off_needs_explicit_permission_and_warns(caplog):
    with pytest.raises(InputError, match="allow_unvalidated_cert"):
        Connection(host="HV1", address="hv1.example.org", cert_validation=False)
    with caplog.at_level(logging.WARNING, logger="imaging.providers.hyperv.connection"):
        Connection(host="HV1", address="hv1.example.org", cert_validation=False, allow_unvalidated_cert=True)
    assert "certificate validation is OFF" in caplog.text


def test_ca_bundle_must_exist(tmp_path):
    with pytest.raises(InputError, match="CA bundle not found"):
        Connection(host="HV1", address="hv1.example.org", cert_validation=str(tmp_path / "missing.pem"))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Connection(host="HV1", address="hv1.example.org", cert_validation=str(bundle)).cert_validation


@pytest.mark.parametrize("address", ["10.0.0.5", "hv1.example.org", "localhost", "127.0.0.2", "0.0.0.0"])
def test_insecure_loopback_is_refused_for_any_other_address(address):
    with pytest.raises(InputError, match="test-only"):
        Connection(host="HV1", address=address, ssl=False, insecure_loopback=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_insecure_loopback_is_accepted_on_loopback(address):
    conn = Connection(host="HV1", address=address, port=1234, ssl=False, insecure_loopback=True)
    assert wsman_kwargs(conn, Credentials("u", "loopback-pw"))["encryption"] == "never"


def test_bad_values_name_the_field():
    with pytest.raises(InputError, match="hosts.HV1.port"):
        Connection(host="HV1", address="hv1", port=70000)
    with pytest.raises(InputError, match="max_concurrent"):
        Connection(host="HV1", address="hv1", max_concurrent=0)
    with pytest.raises(InputError, match="address"):
        Connection(host="HV1", address="https://hv1:5986")


# ------------------------------------------------------------------------------------------ Credentials
def test_credentials_come_from_env_per_host_first():
    conn = Connection(host="hv-01", address="hv1")
    env = {
        "IMAGING_HYPERV_USER": "all",
        "IMAGING_HYPERV_PASSWORD": "pw-all-1",
        "IMAGING_HYPERV_HV_01_USER": "one",
        "IMAGING_HYPERV_HV_01_PASSWORD": "pw-one-1",
    }
    creds = Credentials.for_connection(conn, environ=env, interactive=False)
    assert (creds.username, creds.password) == ("one", "pw-one-1")
    other = Credentials.for_connection(Connection(host="HV2", address="hv2"), environ=env, interactive=False)
    assert (other.username, other.password) == ("all", "pw-all-1")


def test_credentials_never_show_the_password():
    creds = Credentials("svc", "s3cr3t-Pa55")
    assert "s3cr3t-Pa55" not in repr(creds)
    assert "s3cr3t-Pa55" not in str(creds)
    assert "s3cr3t-Pa55" not in f"{creds}"
    assert "s3cr3t-Pa55" not in repr(Secret("s3cr3t-Pa55"))


def test_missing_credentials_without_a_terminal_name_the_variables():
    with pytest.raises(InputError, match="IMAGING_HYPERV_HV1_USER"):
        Credentials.for_connection(Connection(host="HV1", address="hv1"), environ={}, interactive=False)


def test_missing_credentials_at_a_terminal_are_prompted_for():
    creds = Credentials.for_connection(
        Connection(host="HV1", address="hv1"),
        environ={},
        interactive=True,
        ask_user=lambda text: "typed-user",
        prompt=lambda text: "typed-pw-1",
    )
    assert (creds.username, creds.password) == ("typed-user", "typed-pw-1")


def test_certificate_credentials_need_existing_files(tmp_path):
    conn = Connection(host="HV1", address="hv1", auth="certificate")
    with pytest.raises(InputError, match="IMAGING_HYPERV_CERT_PEM"):
        Credentials.for_connection(conn, environ={})
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    creds = Credentials.for_connection(
        conn, environ={"IMAGING_HYPERV_CERT_PEM": str(cert), "IMAGING_HYPERV_KEY_PEM": str(key)}
    )
    kwargs = wsman_kwargs(conn, creds)
    assert kwargs["certificate_pem"] == str(cert) and kwargs["certificate_key_pem"] == str(key)
    assert "password" not in kwargs


def test_the_inventory_trust_wins_over_requests_ca_bundle(tmp_path, monkeypatch):
    """requests swaps REQUESTS_CA_BUNDLE in for ``verify=True``; the session pypsrp builds must not."""
    import requests.certs
    from pypsrp.wsman import WSMan

    other = tmp_path / "someone-elses.pem"
    other.write_text("not our CA")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    conn = Connection(host="HV1", address="hv1.example.org")
    verify, said = conn.trust()
    assert verify == requests.certs.where() and f"REQUESTS_CA_BUNDLE={other} is ignored" in said
    session = WSMan(**wsman_kwargs(conn, CREDS["HV1"])).transport._build_session()
    assert session.verify == requests.certs.where()  # with verify=True pypsrp would have taken the variable

    ours = tmp_path / "facility-ca.pem"
    ours.write_text("our CA")
    conn = Connection(host="HV1", address="hv1.example.org", cert_validation=str(ours))
    assert conn.trust() == (str(ours), f"the CA bundle {ours} (cert_validation in hosts.yaml)")
    assert WSMan(**wsman_kwargs(conn, CREDS["HV1"])).transport._build_session().verify == str(ours)


# ------------------------------------------------------------------------------------------ parse_result
def test_parse_result_reads_only_the_marked_json():
    lines = ['noise {"changed": true}', RESULT_BEGIN, '{"changed": true,', ' "n": 2}', RESULT_END, "after"]
    assert parse_result(lines, host="HV1", step="s") == {"changed": True, "n": 2}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["just text", '{"changed": true}'], "no result"),
        ([RESULT_BEGIN, "{}", RESULT_END, RESULT_BEGIN, "{}", RESULT_END], "2 results"),
        ([RESULT_BEGIN, "{not json", RESULT_END], "not valid JSON"),
        ([RESULT_BEGIN, "[1, 2]", RESULT_END], "must be a JSON object"),
        ([RESULT_BEGIN, '{"ok": true}', RESULT_END], "boolean 'changed'"),
        ([RESULT_BEGIN, '{"changed": "yes"}', RESULT_END], "boolean 'changed'"),
        ([], "last output: nothing"),
        ([RESULT_BEGIN, '{"a": 1}'], "incomplete"),
        ([RESULT_END, "{}", RESULT_BEGIN], "incomplete"),
    ],
)
def test_parse_result_errors_name_host_and_step(lines, message):
    with pytest.raises(ProviderError, match=message) as err:
        parse_result(lines, host="HV7", step="stage_artifact")
    assert "host HV7" in str(err.value) and "step stage_artifact" in str(err.value)


def test_parse_result_tolerates_crlf_indentation_and_multi_line_items():
    lines = ["x\r\n", "  " + RESULT_BEGIN + "\r\n", '{"changed": false,\r\n "n": 1}\r\n', RESULT_END + "\r\n"]
    assert parse_result(lines, host="H", step="s") == {"changed": False, "n": 1}
    one_item = f"progress\n{RESULT_BEGIN}\n{{\"changed\": true}}\n{RESULT_END}\n"
    assert parse_result([one_item], host="H", step="s") == {"changed": True}


def test_parse_result_shows_the_tail_of_the_output_without_secrets():
    secret = "Tail-Secret-771"
    Credentials("svc", secret)  # registers it
    with pytest.raises(ProviderError) as err:
        parse_result(["started", f"connecting with {secret}", "gave up"], host="H", step="s")
    assert "gave up" in str(err.value) and secret not in str(err.value) and REDACTED in str(err.value)


def test_parse_result_redacts_secrets_from_the_result_it_returns():
    secret = "Result-Secret-553"
    Secret(secret)
    line = json.dumps({"changed": True, "note": f"used {secret}", "list": [secret], secret: 1})
    data = parse_result([RESULT_BEGIN, line, RESULT_END], host="H", step="s")
    assert secret not in json.dumps(data) and data["note"] == f"used {REDACTED}"


def test_the_markers_have_one_definition():
    import imaging.core.pstemplates
    import imaging.providers.hyperv.results

    assert imaging.providers.hyperv.results.RESULT_BEGIN is imaging.core.pstemplates.RESULT_BEGIN
    assert imaging.providers.hyperv.results.RESULT_END is imaging.core.pstemplates.RESULT_END


# ------------------------------------------------------------------------------------ against the endpoint
def test_script_runs_and_parameters_travel_as_pipeline_parameters(endpoint):
    with SessionPool([loopback(endpoint.port)], credentials=CREDS) as pool:
        res = pool.run_script(
            "HV1",
            "param($Name, $GuestPassword) 'x'",
            step="ensure_vm",
            timeout_s=20,
            parameters={"Name": "NDXZOOM", "GuestPassword": Secret("Guest-Pw-123")},
        )
    assert res.data == {"changed": False, "echo": len("param($Name, $GuestPassword) 'x'")}
    assert res.attempts == 1 and res.host == "HV1" and res.step == "ensure_vm"
    sent = endpoint.commands[0]
    assert sent.parameters == {"Name": "NDXZOOM", "GuestPassword": "Guest-Pw-123"}
    assert "Guest-Pw-123" not in sent.script


def test_one_shell_is_reused_for_many_calls_and_closed_at_exit(endpoint):
    with SessionPool([loopback(endpoint.port)], credentials=CREDS) as pool:
        for i in range(12):
            assert pool.run_script("HV1", f"'{i}'", step="get_state", timeout_s=20).data["changed"] is False
        assert endpoint.shells_created == 1
        assert pool.pools_opened("HV1") == 1
        assert endpoint.shells_deleted == 0
    assert len(endpoint.commands) == 12
    assert endpoint.shells_deleted == 1


def test_script_error_names_message_and_line_and_is_not_retried():
    def fail(script, params):
        return Reply(errors=[ErrorSpec("Cannot find the VM 'NDXZOOM'", 7, "Get-VM -Name $Name")])

    with LoopbackWSMan(fail) as ep, SessionPool([loopback(ep.port)], credentials=CREDS) as pool:
        with pytest.raises(ProviderError) as err:
            pool.run_script("HV1", "Get-VM", step="get_state", timeout_s=20)
        text = str(err.value)
        assert "host HV1" in text and "step get_state" in text
        assert "Cannot find the VM 'NDXZOOM'" in text and "line 7" in text and "Get-VM -Name $Name" in text
        assert err.value.transient is False
        assert ep.count("Command") == 1
        # the pool survived a script error: the next call reuses its shell
        with pytest.raises(ProviderError):
            pool.run_script("HV1", "Get-VM", step="get_state", timeout_s=20)
        assert ep.shells_created == 1


def test_terminating_error_fails_the_step():
    def fail(script, params):
        return Reply(output=["partial"], failed=ErrorSpec("Access is denied", 3, "New-VHD -Path $Path"))

    with LoopbackWSMan(fail) as ep, SessionPool([loopback(ep.port)], credentials=CREDS) as pool:
        with pytest.raises(ProviderError, match="Access is denied.*line 3"):
            pool.run_script("HV1", "New-VHD", step="create_disk", timeout_s=20)
        assert ep.count("Command") == 1


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (["all done, no markers"], "no result"),
        ([RESULT_BEGIN, "{oops", RESULT_END], "not valid JSON"),
        ([RESULT_BEGIN, "{}", RESULT_END, RESULT_BEGIN, "{}", RESULT_END], "2 results"),
    ],
)
def test_bad_output_is_an_error_and_not_retried(output, message):
    with (
        LoopbackWSMan(lambda s, p: Reply(output=output)) as ep,
        SessionPool([loopback(ep.port)], credentials=CREDS) as pool,
    ):
        with pytest.raises(ProviderError, match=message):
            pool.run_script("HV1", "x", step="preflight", timeout_s=20)
        assert ep.count("Command") == 1


def test_hanging_script_is_stopped_at_the_step_timeout_and_the_pool_replaced():
    def respond(script, params):
        return Reply(hang=True) if script == "hang" else ok(script, params)

    with (
        LoopbackWSMan(respond) as ep,
        SessionPool([loopback(ep.port, operation_timeout_s=1)], credentials=CREDS) as pool,
    ):
        with pytest.raises(ProviderError, match="timed out after 1.5s; the script was stopped") as err:
            pool.run_script("HV1", "hang", step="wait_guest", timeout_s=1.5)
        assert "host HV1" in str(err.value) and "step wait_guest" in str(err.value)
        assert "powershell/signal/ctrl_c" in ep.signals
        assert ep.count("Command") == 1
        assert ep.shells_deleted == 1  # the pool that ran the hung script is not trusted again
        assert pool.run_script("HV1", "fine", step="get_state", timeout_s=20).data["changed"] is False
        assert ep.shells_created == 2


@pytest.mark.parametrize("fault", ["drop", "http503", "http502-html"])
def test_transient_connection_failures_are_retried_with_backoff(fault):
    sleeps = Sleeps()
    with LoopbackWSMan(ok) as ep:
        if fault == "drop":
            ep.drop_connections(2, action="Create")
        elif fault == "http503":
            ep.http_errors(2, status=503, action="Create")
        else:  # an XML-looking proxy page, which pypsrp mistakes for a WSMan fault
            ep.http_errors(2, status=502, action="Create", body=b"<html><body>Bad Gateway</body></html>")
        with SessionPool(
            [loopback(ep.port)], credentials=CREDS, retries=3, backoff_s=0.2, sleep=sleeps, jitter=lambda: 0.5
        ) as pool:
            res = pool.run_script("HV1", "x", step="preflight", timeout_s=30)
        assert res.attempts == 3
        assert sleeps.delays == [0.2, 0.4]  # exponential; jitter 0.5 maps to factor 1.0
        assert ep.count("Create") == 3
        assert ep.count("Command") == 1


def test_jitter_spreads_the_backoff():
    sleeps = Sleeps()
    with LoopbackWSMan(ok) as ep:
        ep.drop_connections(2, action="Create")
        with SessionPool(
            [loopback(ep.port)],
            credentials=CREDS,
            backoff_s=1.0,
            sleep=sleeps,
            jitter=iter([0.0, 1.0]).__next__,
        ) as pool:
            pool.run_script("HV1", "x", step="preflight", timeout_s=30)
    assert sleeps.delays == [0.5, 3.0]


def test_retries_give_up_with_a_transient_error():
    sleeps = Sleeps()
    with LoopbackWSMan(ok) as ep:
        ep.drop_connections(10, action="Create")
        with (
            SessionPool([loopback(ep.port)], credentials=CREDS, retries=2, sleep=sleeps) as pool,
            pytest.raises(ProviderError, match="gave up after 3 attempts") as err,
        ):
            pool.run_script("HV1", "x", step="preflight", timeout_s=30)
        assert err.value.transient is True
        assert ep.count("Create") == 3 and ep.count("Command") == 0


def test_connection_refused_is_transient(endpoint):
    port = endpoint.port
    endpoint.close()
    sleeps = Sleeps()
    with (
        SessionPool([loopback(port)], credentials=CREDS, retries=1, sleep=sleeps) as pool,
        pytest.raises(ProviderError, match="connection failed") as err,
    ):
        pool.run_script("HV1", "x", step="preflight", timeout_s=30)
    assert err.value.transient is True and len(sleeps.delays) == 1


def test_failure_while_the_script_runs_is_reported_not_rerun_and_the_pool_reopened():
    sleeps = Sleeps()
    with LoopbackWSMan(ok) as ep, SessionPool([loopback(ep.port)], credentials=CREDS, sleep=sleeps) as pool:
        pool.run_script("HV1", "warm up", step="get_state", timeout_s=20)
        ep.drop_connections(1, action="Receive")
        with pytest.raises(ProviderError, match="waiting for the script") as err:
            pool.run_script("HV1", "x", step="attach_disk", timeout_s=20)
        assert err.value.transient is True
        assert ep.count("Command") == 2 and sleeps.delays == []
        assert pool.run_script("HV1", "again", step="get_state", timeout_s=20).attempts == 1
        assert ep.shells_created == 2


@pytest.mark.parametrize("bound", [1, 2, 3])
def test_concurrency_per_host_never_exceeds_the_bound(bound):
    with (
        LoopbackWSMan(lambda s, p: Reply(output=result_lines('{"changed": false}'), delay_s=0.1)) as ep,
        SessionPool([loopback(ep.port, max_concurrent=bound)], credentials=CREDS) as pool,
    ):
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                pool.run_script("HV1", f"'{i}'", step="get_state", timeout_s=30)
            except BaseException as err:  # noqa: BLE001 - reported by the assert below
                errors.append(err)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(ep.commands) == 8
        assert 1 <= ep.peak_running <= bound
        assert ep.shells_created <= bound


def test_mount_lock_is_one_exclusive_lock_per_host(endpoint):
    conns = [loopback(endpoint.port), Connection(host="HV2", address="hv2.example.org")]
    pool = SessionPool(conns, credentials=CREDS)
    with pool.mount_lock("HV1"):
        assert not pool._slot("HV1").mount_lock.acquire(blocking=False)
        with pool.mount_lock("HV2"):  # another host's lock is independent
            pass
    with pool.mount_lock("HV1"):
        pass
    with pytest.raises(ProviderError, match="no connection settings"):
        pool.run_script("HV9", "x", step="s", timeout_s=1)


def test_passwords_never_reach_logs_or_errors(endpoint, caplog, monkeypatch):
    password = "Env-Pa55word-xyz"
    guest = "Guest-Secret-987"
    monkeypatch.setenv("IMAGING_HYPERV_HV1_USER", "svc-imaging")
    monkeypatch.setenv("IMAGING_HYPERV_HV1_PASSWORD", password)
    caplog.set_level(logging.DEBUG)
    for name in ("pypsrp", "requests", "urllib3", "winrm", "imaging"):
        caplog.set_level(logging.DEBUG, logger=name)  # restored after the test
    errors = []
    with SessionPool([loopback(endpoint.port)]) as pool:  # credentials from the environment
        pool.run_script(
            "HV1", "param($P) 'x'", step="configure_guest", timeout_s=20, parameters={"P": Secret(guest)}
        )
        endpoint.respond = lambda s, p: Reply(errors=[ErrorSpec(f"bad password {p.get('P')}", 2, "x")])
        try:
            pool.run_script(
                "HV1", "param($P) 'x'", step="configure_guest", timeout_s=20, parameters={"P": Secret(guest)}
            )
        except ProviderError as err:
            errors.append(str(err))
        # a library that logs the secret itself is scrubbed too
        logging.getLogger("pypsrp.wsman").debug("user %s password %s", "svc-imaging", password)
        logging.getLogger("urllib3.connectionpool").error("failed", exc_info=ValueError(password))

    assert errors and REDACTED in errors[0] and guest not in errors[0]
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "Packing PSRP message" in text  # pypsrp really did log the pipeline at DEBUG
    assert REDACTED in text
    for secret in (password, guest):
        assert secret not in text
        for k in range(3):  # inside a base64 blob at any alignment
            core = base64.b64encode(b"\0" * k + secret.encode())[4:-4].decode()
            assert core not in text


def test_a_genuine_wsman_fault_is_reported_and_not_retried():
    sleeps = Sleeps()
    with LoopbackWSMan(ok) as ep:
        ep.faults(1, code=5, text="Access is denied.", action="Create")
        with (
            SessionPool([loopback(ep.port)], credentials=CREDS, sleep=sleeps) as pool,
            pytest.raises(
                ProviderError, match="the host refused opening a session: .*Access is denied"
            ) as err,
        ):
            pool.run_script("HV1", "x", step="preflight", timeout_s=30)
        assert err.value.transient is False
        assert ep.count("Create") == 1 and sleeps.delays == []


def test_a_script_larger_than_one_envelope_arrives_whole_through_send(endpoint):
    # bigger than the 500 KiB envelope pypsrp negotiates with a PSRP 2.3 server: needs Command + Send
    script = "# padding\n" + "\n".join(f"$x{i} = '{'y' * 90}'" for i in range(8000)) + "\n'done'"
    assert len(script) > 700_000
    with SessionPool([loopback(endpoint.port)], credentials=CREDS) as pool:
        res = pool.run_script("HV1", script, step="write_settings", timeout_s=30, parameters={"A": 1})
    assert endpoint.count("Send") >= 1
    assert endpoint.commands[0].script == script and endpoint.commands[0].parameters == {"A": 1}
    assert res.data["echo"] == len(script)


def test_close_deletes_every_shell_and_refuses_further_calls():
    with LoopbackWSMan(lambda s, p: Reply(output=result_lines('{"changed": false}'), delay_s=0.05)) as ep:
        pool = SessionPool([loopback(ep.port, max_concurrent=3)], credentials=CREDS)
        threads = [
            threading.Thread(target=pool.run_script, args=("HV1", "x"), kwargs={"step": "s", "timeout_s": 30})
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        opened = pool.open_sessions("HV1")
        assert 1 <= opened == ep.shells_created <= 3
        pool.close()
        assert pool.open_sessions("HV1") == 0
        assert ep.shells_deleted == ep.shells_created
        with pytest.raises(ProviderError, match="closed"):
            pool.run_script("HV1", "x", step="s", timeout_s=5)


def test_the_step_timeout_covers_waiting_for_a_free_session():
    def respond(script, params):
        return Reply(hang=True) if script == "hang" else ok(script, params)

    with (
        LoopbackWSMan(respond) as ep,
        SessionPool([loopback(ep.port, max_concurrent=1, operation_timeout_s=1)], credentials=CREDS) as pool,
    ):
        started = threading.Event()
        hung: list[BaseException] = []

        def hang() -> None:
            started.set()
            try:
                pool.run_script("HV1", "hang", step="wait_guest", timeout_s=3)
            except ProviderError as err:
                hung.append(err)

        worker = threading.Thread(target=hang)
        worker.start()
        started.wait()
        for _ in range(1000):  # until the hanging script holds the only session
            if ep.commands:
                break
            threading.Event().wait(0.01)
        assert ep.commands, "the hanging script never started"
        with pytest.raises(ProviderError, match="waiting for a free session"):
            pool.run_script("HV1", "quick", step="get_state", timeout_s=0.5)
        worker.join()
        assert len(hung) == 1 and "timed out" in str(hung[0])
        assert [c.script for c in ep.commands] == ["hang"]


# ------------------------------------------------------------------------------- run_command over WinRS
def test_flags_paths_and_configuration_names_are_checked():
    with pytest.raises(InputError, match="hosts.HV1.ssl"):
        Connection(host="HV1", address="hv1", ssl="yes")
    with pytest.raises(InputError, match="hosts.HV1.path"):
        Connection(host="HV1", address="hv1", path="../x?y")
    with pytest.raises(InputError, match="configuration_name"):
        Connection(host="HV1", address="hv1", configuration_name="bad name; rm")
    assert Connection(host="HV1", address="hv1", configuration_name="Imaging.JEA").configuration_name


def test_connection_from_an_inventory_host_entry():
    from types import SimpleNamespace

    entry = SimpleNamespace(
        name="HVHOST04",
        address="[::1]",
        port=5986,
        ssl=True,
        auth="kerberos",
        cert_validation=True,
        max_concurrent=3,
        storage_root="E:\\Imaging",
    )
    conn = Connection.from_inventory(entry, source="instruments/hosts.yaml", operation_timeout_s=60)
    assert (conn.host, conn.address, conn.auth, conn.max_concurrent) == ("HVHOST04", "::1", "kerberos", 3)
    assert conn.operation_timeout_s == 60
    entry.auth = "basic"
    with pytest.raises(InputError, match=r"instruments/hosts.yaml: field 'hosts.HVHOST04.auth'"):
        Connection.from_inventory(entry, source="instruments/hosts.yaml")


@pytest.mark.parametrize(("auth", "modules", "extra"), [
    ("kerberos", ("gssapi", "krb5"), "imaging[kerberos]"),
    ("credssp", ("requests_credssp",), "imaging[credssp]"),
])
def test_an_auth_whose_package_is_missing_says_what_to_install(endpoint, monkeypatch, auth, modules, extra):
    import sys

    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail, whatever is installed
    with (
        SessionPool([loopback(endpoint.port, auth=auth)], credentials=CREDS) as pool,
        pytest.raises(ProviderError, match=re.escape(extra)) as err,
    ):
        pool.run_script("HV1", "x", step="preflight", timeout_s=5)
    assert err.value.transient is False and "host HV1 step preflight" in str(err.value)
    assert endpoint.actions == []  # refused before anything was sent


@pytest.mark.parametrize("short", ["a", "abc"])
def test_a_password_too_short_to_redact_is_refused(short):
    from imaging.providers.hyperv.credentials import GuestCredential

    conn = Connection(host="HV1", address="hv1.example.org")
    env = {"IMAGING_HYPERV_USER": "svc", "IMAGING_HYPERV_PASSWORD": short}
    with pytest.raises(InputError, match="at least 4 characters"):
        Credentials.for_connection(conn, environ=env, interactive=False)
    with pytest.raises(InputError, match="at least 4 characters"):
        GuestCredential("Administrator", short)


def test_the_template_password_is_kept_out_of_logs_and_errors(tmp_path):
    from imaging.core.redaction import redact
    from imaging.images.answer_files import TemplateSettings, render_unattend
    from imaging.providers.hyperv.scripts import TEMPLATE_DIR

    secret = "Tmpl-pass-8472"
    render_unattend(TemplateSettings(version="win11-ltsc-2026.1", admin_password=secret),
                    templates=TEMPLATE_DIR.parent)
    assert secret not in redact(f"Invoke-Thing -Password {secret}")
    with pytest.raises(InputError, match="at least 4 characters"):
        render_unattend(TemplateSettings(version="win11-ltsc-2026.1", admin_password="pw"),
                        templates=TEMPLATE_DIR.parent)
