"""A loopback WS-Management + PSRP endpoint, just enough for pypsrp's RunspacePool and PowerShell.

It also speaks the WinRS cmd shell (Create without creationXml, Command, Receive of stdout/stderr with an
exit code, Signal, Delete) for pywinrm's ``run_command`` path, scripted through ``respond_command``.

It listens on 127.0.0.1 (ephemeral port) over plain HTTP without authentication and answers:
Create (a PowerShell shell: reads SESSION_CAPABILITY + INIT_RUNSPACEPOOL from creationXml), Receive on the
shell (SESSION_CAPABILITY, APPLICATION_PRIVATE_DATA, RUNSPACEPOOL_STATE Opened), Command (CREATE_PIPELINE,
completed by Send when fragmented), Receive on a pipeline (PIPELINE_OUTPUT strings, WARNING/ERROR_RECORD,
PIPELINE_STATE), Signal and Delete. What a pipeline does is scripted per test through ``respond``, a
function of the received script and parameters returning a :class:`Reply`. Server messages are built with
pypsrp's public message and serializer classes; the wire framing is written here.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pypsrp.complex_objects import (
    GenericComplexObject,
    PSInvocationState,
    RunspacePoolState,
)
from pypsrp.messages import (
    ApplicationPrivateData,
    Destination,
    ErrorRecordMessage,
    MessageType,
    PipelineState,
    RunspacePoolStateMessage,
    SessionCapability,
    WarningRecord,
)
from pypsrp.powershell import Fragment
from pypsrp.serializer import Serializer
from pypsrp.wsman import NAMESPACES

S, WSA, WSMAN, RSP = NAMESPACES["s"], NAMESPACES["wsa"], NAMESPACES["wsman"], NAMESPACES["rsp"]
WST, WSMANFAULT = NAMESPACES["wst"], NAMESPACES["wsmanfault"]
PS_NS = "http://schemas.microsoft.com/powershell"
SHELL_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
CMD_RESOURCE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
WSMAN_OPERATION_TIMEOUT = 2150858793


@dataclass
class ErrorSpec:
    """One PowerShell error record: its message, the script line number and the line's text."""

    message: str
    line: int = 1
    line_text: str = ""


@dataclass
class Reply:
    """What a pipeline does: emit output lines, warnings, error records; fail; or hang until stopped."""

    output: list[str] = field(default_factory=list)
    errors: list[ErrorSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: ErrorSpec | None = None  # a terminating error: PIPELINE_STATE Failed with this record
    hang: bool = False
    delay_s: float = 0.0  # how long the pipeline "runs" before it answers (for concurrency tests)


@dataclass
class CommandReply:
    """What a plain (WinRS cmd shell) command does: print, exit with a code, or hang until stopped."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    hang: bool = False


@dataclass
class ReceivedCommand:
    """A pipeline the endpoint received, with when it started and ended (``time.monotonic``, for overlap
    checks: the end is set when its result was sent, or it was stopped or its shell deleted)."""

    shell_id: str
    command_id: str
    script: str
    parameters: dict[str, Any]
    started: float = 0.0
    ended: float | None = None


@dataclass
class _Pipeline:
    shell_id: str
    command_id: str
    pid: str
    buffer: bytes = b""
    reply: Reply | None = None
    command_reply: CommandReply | None = None
    done: bool = False
    started: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    record: ReceivedCommand | None = None


@dataclass
class _Shell:
    shell_id: str
    rpid: str | None  # None for a cmd (WinRS) shell
    pending: list[bytes] = field(default_factory=list)
    pipelines: dict[str, _Pipeline] = field(default_factory=dict)


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


class LoopbackWSMan:
    """Start with ``with LoopbackWSMan(respond) as ep:``; ``ep.port`` is the port; counters are public."""

    def __init__(
        self,
        respond: Callable[[str, dict[str, Any]], Reply] | None = None,
        respond_command: Callable[[str], CommandReply] | None = None,
    ) -> None:
        self.respond = respond or (lambda script, params: Reply())
        self.respond_command = respond_command or (lambda line: CommandReply())
        self.command_lines: list[str] = []
        self.cmd_shells_created = 0
        self.cmd_shells_deleted = 0
        self.lock = threading.Lock()
        self.shells: dict[str, _Shell] = {}
        self.shells_created = 0
        self.shells_deleted = 0
        self.commands: list[ReceivedCommand] = []
        self.signals: list[str] = []
        self.actions: list[str] = []
        self.running = 0
        self.peak_running = 0
        self._drop: dict[str | None, int] = {}
        self._http_errors: dict[str | None, tuple[int, int]] = {}
        self._http_error_body = b""
        self._faults: dict[str | None, tuple[int, int]] = {}
        self._fault_text = ""
        self._serializer_lock = threading.Lock()
        self._object_id = 0
        self._closing = threading.Event()
        handler = self._make_handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="loopback-wsman",
            daemon=True,
        )

    # -- scripting the endpoint
    def drop_connections(self, count: int, action: str | None = None) -> None:
        """Close the next ``count`` requests (of ``action``, e.g. "Create", or any) without an answer."""
        with self.lock:
            self._drop[action] = count

    def http_errors(
        self, count: int, status: int = 503, action: str | None = None, body: bytes = b"Service Unavailable"
    ) -> None:
        """Answer the next ``count`` requests with a bare HTTP ``status`` and ``body`` (no WSMan fault)."""
        with self.lock:
            self._http_errors[action] = (count, status)
            self._http_error_body = body

    def faults(self, count: int, code: int, text: str, action: str | None = None) -> None:
        """Answer the next ``count`` requests with a genuine WSMan fault (HTTP 500 + SOAP fault)."""
        with self.lock:
            self._faults[action] = (count, code)
            self._fault_text = text

    def count(self, action: str) -> int:
        with self.lock:
            return self.actions.count(action)

    # -- lifecycle
    def __enter__(self) -> LoopbackWSMan:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        with self.lock:
            for shell in self.shells.values():
                for pipe in shell.pipelines.values():
                    pipe.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    # -- HTTP
    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in separate writes; without this Nagle + delayed ACK add ~40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = endpoint.handle(body)
                if status is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler

    def _take(self, table: dict, action: str) -> Any:
        for key in (action, None):
            entry = table.get(key)
            if entry is None:
                continue
            if isinstance(entry, int) and entry > 0:
                table[key] = entry - 1
                return True
            if isinstance(entry, tuple) and entry[0] > 0:
                table[key] = (entry[0] - 1, entry[1])
                return entry[1]
        return None

    def handle(self, body: bytes) -> tuple[int | None, bytes]:
        if not body:
            return 200, b""
        request = ET.fromstring(body)
        header = request.find(_q(S, "Header"))
        action_uri = header.findtext(_q(WSA, "Action")) or ""
        action = action_uri.rsplit("/", 1)[-1]
        message_id = header.findtext(_q(WSA, "MessageID")) or ""
        timeout_text = header.findtext(_q(WSMAN, "OperationTimeout")) or "PT20S"
        match = re.match(r"PT([0-9.]+)S", timeout_text)
        op_timeout = float(match.group(1)) if match else 20.0
        selector = header.find(f"{_q(WSMAN, 'SelectorSet')}/{_q(WSMAN, 'Selector')}[@Name='ShellId']")
        shell_id = selector.text if selector is not None else None
        with self.lock:
            self.actions.append(action)
            if self._take(self._drop, action):
                return None, b""
            status = self._take(self._http_errors, action)
            fault_code = self._take(self._faults, action)
        if fault_code:
            return self._fault(message_id, fault_code, self._fault_text)
        if status:
            return status, self._http_error_body
        body_el = request.find(_q(S, "Body"))
        handlers = {
            "Create": self._create,
            "Receive": self._receive,
            "Command": self._command,
            "Send": self._send,
            "Signal": self._signal,
            "Delete": self._delete,
        }
        if action not in handlers:
            return self._fault(
                message_id, 2150858771, f"action {action} not supported by the loopback endpoint"
            )
        return handlers[action](message_id, shell_id, body_el, op_timeout)

    def _envelope(self, action: str, relates_to: str, body_children: list[ET.Element]) -> bytes:
        env = ET.Element(_q(S, "Envelope"))
        header = ET.SubElement(env, _q(S, "Header"))
        ET.SubElement(header, _q(WSA, "Action")).text = action
        ET.SubElement(header, _q(WSA, "MessageID")).text = f"uuid:{uuid.uuid4()}"
        ET.SubElement(header, _q(WSA, "RelatesTo")).text = relates_to
        body = ET.SubElement(env, _q(S, "Body"))
        for child in body_children:
            body.append(child)
        return ET.tostring(env, encoding="utf-8", method="xml")

    def _fault(self, relates_to: str, code: int, text: str) -> tuple[int, bytes]:
        fault = ET.Element(_q(S, "Fault"))
        code_el = ET.SubElement(fault, _q(S, "Code"))
        ET.SubElement(code_el, _q(S, "Value")).text = "s:Receiver"
        reason = ET.SubElement(fault, _q(S, "Reason"))
        ET.SubElement(reason, _q(S, "Text")).text = text
        detail = ET.SubElement(fault, _q(S, "Detail"))
        wsman_fault = ET.SubElement(detail, _q(WSMANFAULT, "WSManFault"), Code=str(code), Machine="127.0.0.1")
        ET.SubElement(wsman_fault, _q(WSMANFAULT, "Message")).text = text
        return 500, self._envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, [fault])

    # -- PSRP framing
    def _pack(self, rpid: str, pid: str | None, message: Any) -> bytes:
        message_type = message.MESSAGE_TYPE
        with self._serializer_lock:
            element = Serializer().serialize(message)
            self._object_id += 1
            object_id = self._object_id
        data = ET.tostring(element, encoding="utf-8", method="xml")
        pid_bytes = uuid.UUID(pid).bytes_le if pid else b"\0" * 16
        payload = struct.pack("<II", Destination.CLIENT, message_type) + uuid.UUID(rpid).bytes_le + pid_bytes
        return Fragment(object_id, 0, payload + data, True, True).pack()

    def _pack_output(self, rpid: str, pid: str, line: str) -> bytes:
        with self._serializer_lock:
            element = Serializer().serialize(line)
            self._object_id += 1
            object_id = self._object_id
        data = ET.tostring(element, encoding="utf-8", method="xml")
        payload = (
            struct.pack("<II", Destination.CLIENT, MessageType.PIPELINE_OUTPUT)
            + uuid.UUID(rpid).bytes_le
            + uuid.UUID(pid).bytes_le
        )
        return Fragment(object_id, 0, payload + data, True, True).pack()

    @staticmethod
    def _error_record(spec: ErrorSpec) -> ErrorRecordMessage:
        exception = GenericComplexObject()
        exception.types = [
            "System.Management.Automation.RuntimeException",
            "System.Exception",
            "System.Object",
        ]
        exception.adapted_properties = {"Message": spec.message}
        exception.to_string = spec.message
        record = ErrorRecordMessage(exception=exception)
        for name, _meta in record._extended_properties:
            if not hasattr(record, name):
                setattr(record, name, None)
        record.invocation = True
        record.extended_info_present = True
        record.fq_error = "RuntimeException"
        record.category = 0
        record.reason = "RuntimeException"
        record.message = spec.message
        record.invocation_line = spec.line_text
        record.invocation_script_line_number = spec.line
        record.invocation_offset_in_line = 1
        record.invocation_position_message = f"At line:{spec.line} char:1\n+ {spec.line_text}"
        return record

    @staticmethod
    def _parse_fragments(data: bytes) -> list[Fragment]:
        fragments = []
        while data:
            fragment, data = Fragment.unpack(data)
            fragments.append(fragment)
        return fragments

    # -- actions
    def _create(
        self, message_id: str, _shell_id: str | None, body: ET.Element, _t: float
    ) -> tuple[int, bytes]:
        shell_el = body.find(_q(RSP, "Shell"))
        creation = shell_el.find(_q(PS_NS, "creationXml"))
        if creation is None:
            return self._create_cmd(message_id)
        fragments = self._parse_fragments(base64.b64decode(creation.text))
        types = [struct.unpack("<I", f.data[4:8])[0] for f in fragments if f.start]
        if types[:2] != [MessageType.SESSION_CAPABILITY, MessageType.INIT_RUNSPACEPOOL]:
            return self._fault(message_id, 2150858843, f"unexpected creationXml messages {types}")
        rpid = str(uuid.UUID(bytes_le=fragments[0].data[8:24]))
        shell_id = shell_el.get("ShellId") or str(uuid.uuid4()).upper()
        shell = _Shell(shell_id, rpid)
        shell.pending = [
            self._pack(rpid, None, SessionCapability("2.3", "2.0", "1.1.0.1")),
            self._pack(rpid, None, ApplicationPrivateData(data={})),
            self._pack(rpid, None, RunspacePoolStateMessage(state=RunspacePoolState.OPENED)),
        ]
        with self.lock:
            self.shells[shell_id] = shell
            self.shells_created += 1
        created = ET.Element(_q(WST, "ResourceCreated"))
        ET.SubElement(created, _q(WSA, "Address")).text = f"http://127.0.0.1:{self.port}/wsman"
        ref = ET.SubElement(created, _q(WSA, "ReferenceParameters"))
        ET.SubElement(ref, _q(WSMAN, "ResourceURI")).text = f"{PS_NS}/Microsoft.PowerShell"
        selectors = ET.SubElement(ref, _q(WSMAN, "SelectorSet"))
        ET.SubElement(selectors, _q(WSMAN, "Selector"), Name="ShellId").text = shell_id
        shell_info = ET.Element(_q(RSP, "Shell"))
        ET.SubElement(shell_info, _q(RSP, "ShellId")).text = shell_id
        ET.SubElement(shell_info, _q(RSP, "ResourceUri")).text = f"{PS_NS}/Microsoft.PowerShell"
        ET.SubElement(shell_info, _q(RSP, "State")).text = "Connected"
        return 200, self._envelope(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", message_id, [created, shell_info]
        )

    def _create_cmd(self, message_id: str) -> tuple[int, bytes]:
        shell_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.shells[shell_id] = _Shell(shell_id, None)
            self.cmd_shells_created += 1
        created = ET.Element(_q(WST, "ResourceCreated"))
        ET.SubElement(created, _q(WSA, "Address")).text = f"http://127.0.0.1:{self.port}/wsman"
        ref = ET.SubElement(created, _q(WSA, "ReferenceParameters"))
        ET.SubElement(ref, _q(WSMAN, "ResourceURI")).text = CMD_RESOURCE
        selectors = ET.SubElement(ref, _q(WSMAN, "SelectorSet"))
        ET.SubElement(selectors, _q(WSMAN, "Selector"), Name="ShellId").text = shell_id
        return 200, self._envelope(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", message_id, [created]
        )

    def _command_cmd(self, message_id: str, shell: _Shell, line: ET.Element) -> tuple[int, bytes]:
        text = line.findtext(_q(RSP, "Command")) or ""
        arguments = line.findtext(_q(RSP, "Arguments"))
        command_line = f"{text} {arguments}" if arguments else text
        command_id = str(uuid.uuid4()).upper()
        pipe = _Pipeline(shell.shell_id, command_id, command_id)
        with self.lock:
            self.command_lines.append(command_line)
            shell.pipelines[command_id] = pipe
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            pipe.started = True
        pipe.command_reply = self.respond_command(command_line)
        response = ET.Element(_q(RSP, "CommandResponse"))
        ET.SubElement(response, _q(RSP, "CommandId")).text = command_id
        return 200, self._envelope(SHELL_ACTION + "CommandResponse", message_id, [response])

    def _receive_cmd(self, message_id: str, pipe: _Pipeline, op_timeout: float) -> tuple[int, bytes]:
        reply = pipe.command_reply
        if reply.hang:
            pipe.stopped.wait(op_timeout)
            return self._fault(message_id, WSMAN_OPERATION_TIMEOUT, "The WS-Management operation timed out")
        response = ET.Element(_q(RSP, "ReceiveResponse"))
        for name, text in (("stdout", reply.stdout), ("stderr", reply.stderr)):
            attrs = {"Name": name, "CommandId": pipe.command_id}
            ET.SubElement(response, _q(RSP, "Stream"), attrs).text = base64.b64encode(text.encode()).decode()
            ET.SubElement(response, _q(RSP, "Stream"), {**attrs, "End": "true"})
        state = ET.SubElement(
            response,
            _q(RSP, "CommandState"),
            CommandId=pipe.command_id,
            State=SHELL_ACTION + "CommandState/Done",
        )
        ET.SubElement(state, _q(RSP, "ExitCode")).text = str(reply.exit_code)
        self._finish(pipe)
        return 200, self._envelope(SHELL_ACTION + "ReceiveResponse", message_id, [response])

    def _shell(self, shell_id: str | None) -> _Shell | None:
        with self.lock:
            return self.shells.get(shell_id or "")

    def _command(
        self, message_id: str, shell_id: str | None, body: ET.Element, _t: float
    ) -> tuple[int, bytes]:
        shell = self._shell(shell_id)
        if shell is None:
            return self._fault(message_id, 2150858843, "the shell does not exist")
        line = body.find(_q(RSP, "CommandLine"))
        if shell.rpid is None:
            return self._command_cmd(message_id, shell, line)
        command_id = line.get("CommandId") or str(uuid.uuid4()).upper()
        data = base64.b64decode(line.findtext(_q(RSP, "Arguments")) or "")
        pid = str(uuid.UUID(bytes_le=self._parse_fragments(data)[0].data[24:40]))
        pipe = _Pipeline(shell.shell_id, command_id, pid)
        with self.lock:
            shell.pipelines[command_id.upper()] = pipe
        self._feed(shell, pipe, data)
        response = ET.Element(_q(RSP, "CommandResponse"))
        ET.SubElement(response, _q(RSP, "CommandId")).text = command_id
        return 200, self._envelope(SHELL_ACTION + "CommandResponse", message_id, [response])

    def _send(self, message_id: str, shell_id: str | None, body: ET.Element, _t: float) -> tuple[int, bytes]:
        shell = self._shell(shell_id)
        stream = body.find(f"{_q(RSP, 'Send')}/{_q(RSP, 'Stream')}")
        pipe = (
            shell.pipelines.get((stream.get("CommandId") or "").upper())
            if shell and stream is not None
            else None
        )
        if pipe is None:
            return self._fault(message_id, 2150858843, "Send for an unknown command")
        self._feed(shell, pipe, base64.b64decode(stream.text or ""))
        return 200, self._envelope(
            SHELL_ACTION + "SendResponse", message_id, [ET.Element(_q(RSP, "SendResponse"))]
        )

    def _feed(self, shell: _Shell, pipe: _Pipeline, data: bytes) -> None:
        """Collect CREATE_PIPELINE fragments; when the message is whole, decide what the pipeline does."""
        for fragment in self._parse_fragments(data):
            pipe.buffer += fragment.data
            if not fragment.end:
                continue
            message_type = struct.unpack("<I", pipe.buffer[4:8])[0]
            if message_type != MessageType.CREATE_PIPELINE:
                continue
            script, parameters = self._parse_create_pipeline(pipe.buffer[40:])
            record = ReceivedCommand(shell.shell_id, pipe.command_id, script, parameters, time.monotonic())
            with self.lock:
                self.commands.append(record)
                pipe.record = record
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
                pipe.started = True
            pipe.reply = self.respond(script, parameters)
            pipe.buffer = b""

    @staticmethod
    def _parse_create_pipeline(xml_bytes: bytes) -> tuple[str, dict[str, Any]]:
        if xml_bytes.startswith(b"\xef\xbb\xbf"):
            xml_bytes = xml_bytes[3:]
        root = ET.fromstring(xml_bytes)
        cmd = root.find("./MS/Obj[@N='PowerShell']/MS/Obj[@N='Cmds']/LST/Obj")
        script = Serializer().deserialize(cmd.find("./MS/S[@N='Cmd']"))
        parameters: dict[str, Any] = {}
        for arg in cmd.findall("./MS/Obj[@N='Args']/LST/Obj"):
            name = Serializer().deserialize(arg.find("./MS/*[@N='N']"))
            parameters[name] = Serializer().deserialize(arg.find("./MS/*[@N='V']"))
        return script, parameters

    def _receive(
        self, message_id: str, shell_id: str | None, body: ET.Element, op_timeout: float
    ) -> tuple[int, bytes]:
        shell = self._shell(shell_id)
        if shell is None:
            return self._fault(message_id, 2150858843, "the shell does not exist")
        desired = body.find(f"{_q(RSP, 'Receive')}/{_q(RSP, 'DesiredStream')}")
        command_id = desired.get("CommandId") if desired is not None else None
        if command_id is None:
            with self.lock:
                chunks, shell.pending = shell.pending, []
            if not chunks:
                self._closing.wait(op_timeout)
                return self._fault(
                    message_id, WSMAN_OPERATION_TIMEOUT, "The WS-Management operation timed out"
                )
            return 200, self._receive_response(message_id, None, chunks, done=False)
        pipe = shell.pipelines.get(command_id.upper())
        if pipe is not None and pipe.command_reply is not None:
            return self._receive_cmd(message_id, pipe, op_timeout)
        if pipe is None or pipe.reply is None:
            return self._fault(message_id, 2150858843, "Receive for an unknown or unstarted command")
        reply = pipe.reply
        if reply.hang:
            pipe.stopped.wait(op_timeout)
            return self._fault(message_id, WSMAN_OPERATION_TIMEOUT, "The WS-Management operation timed out")
        if reply.delay_s:
            pipe.stopped.wait(reply.delay_s)
        chunks = [self._pack_output(shell.rpid, pipe.pid, line) for line in reply.output]
        chunks += [self._pack(shell.rpid, pipe.pid, WarningRecord(message=text)) for text in reply.warnings]
        chunks += [self._pack(shell.rpid, pipe.pid, self._error_record(spec)) for spec in reply.errors]
        if reply.failed is not None:
            state = PipelineState(
                state=PSInvocationState.FAILED, error_record=self._error_record(reply.failed)
            )
        else:
            state = PipelineState(state=PSInvocationState.COMPLETED)
        chunks.append(self._pack(shell.rpid, pipe.pid, state))
        self._finish(pipe)
        return 200, self._receive_response(message_id, command_id, chunks, done=True)

    def _finish(self, pipe: _Pipeline) -> None:
        with self.lock:
            if pipe.started and not pipe.done:
                pipe.done = True
                self.running -= 1
                if pipe.record is not None:
                    pipe.record.ended = time.monotonic()

    def _receive_response(
        self, message_id: str, command_id: str | None, chunks: list[bytes], done: bool
    ) -> bytes:
        response = ET.Element(_q(RSP, "ReceiveResponse"))
        for chunk in chunks:
            attrs = {"Name": "stdout"}
            if command_id:
                attrs["CommandId"] = command_id
            ET.SubElement(response, _q(RSP, "Stream"), attrs).text = base64.b64encode(chunk).decode("ascii")
        if command_id:
            state = ET.SubElement(
                response,
                _q(RSP, "CommandState"),
                CommandId=command_id,
                State=SHELL_ACTION + "CommandState/" + ("Done" if done else "Running"),
            )
            if done:
                ET.SubElement(state, _q(RSP, "ExitCode")).text = "0"
        return self._envelope(SHELL_ACTION + "ReceiveResponse", message_id, [response])

    def _signal(
        self, message_id: str, shell_id: str | None, body: ET.Element, _t: float
    ) -> tuple[int, bytes]:
        shell = self._shell(shell_id)
        signal = body.find(_q(RSP, "Signal"))
        command_id = (signal.get("CommandId") or "").upper() if signal is not None else ""
        code = signal.findtext(_q(RSP, "Code")) if signal is not None else ""
        with self.lock:
            self.signals.append(code or "")
        pipe = shell.pipelines.get(command_id) if shell else None
        if pipe is not None:
            pipe.stopped.set()
            self._finish(pipe)
        return 200, self._envelope(
            SHELL_ACTION + "SignalResponse", message_id, [ET.Element(_q(RSP, "SignalResponse"))]
        )

    def _delete(self, message_id: str, shell_id: str | None, _b: ET.Element, _t: float) -> tuple[int, bytes]:
        with self.lock:
            shell = self.shells.pop(shell_id or "", None)
            if shell is not None and shell.rpid is None:
                self.cmd_shells_deleted += 1
            elif shell is not None:
                self.shells_deleted += 1
        if shell is not None:
            for pipe in shell.pipelines.values():
                pipe.stopped.set()
                self._finish(pipe)
        return 200, self._envelope(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", message_id, []
        )
