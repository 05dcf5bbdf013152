"""A real SMTP server for the outbox tests: aiosmtpd on 127.0.0.1, started by the tests.

It records every message it accepts (parsed), answers DATA with the replies a test
queues (e.g. "451 ..." then the default 250), and can hold a conversation at RCPT
(before the message is transmitted) or after the message arrived (the server has it,
the client waits for the reply): the two windows a worker can die in.
"""

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from crmdb.outbox.config import SmtpConfig


@dataclass
class Received:
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)
    replies: deque[str] = field(default_factory=deque)
    hold_rcpt: threading.Event | None = None  # set: RCPT waits until it is set
    hold_data: threading.Event | None = None  # set: the reply to DATA waits
    reached: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        envelope.rcpt_tos.append(address)
        if self.hold_rcpt is not None:
            self.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, self.hold_rcpt.wait)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.replies.popleft() if self.replies else "250 OK: queued"
        if reply.startswith("250"):
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            self.received.append(Received(list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        if self.hold_data is not None:
            self.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, self.hold_data.wait)
        return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpServer:
    recorder: Recorder
    port: int

    def config(self, **changes: Any) -> SmtpConfig:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "user": None,
            "password": None,
            "sender": "Sao Việt CRM <crm@saoviet.test>",
            "timeout": 30.0,
        }
        values.update(changes)
        return SmtpConfig(**values)

    def env(self) -> dict[str, str]:
        """The worker's environment for this server."""
        return {
            "CRMDB_SMTP_HOST": "127.0.0.1",
            "CRMDB_SMTP_PORT": str(self.port),
            "CRMDB_SMTP_SECURITY": "none",
            "CRMDB_SMTP_FROM": "Sao Việt CRM <crm@saoviet.test>",
        }


USER, PASSWORD = "crm", "mật-khẩu"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@contextmanager
def smtp_server(tls: tuple[Path, Path] | None = None) -> Iterator[SmtpServer]:
    """A server on 127.0.0.1; with (cert, key) it requires STARTTLS and AUTH (USER)."""
    recorder = Recorder()
    port = free_port()
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        options = {
            "tls_context": context,
            "require_starttls": True,
            "auth_required": True,
            "authenticator": _authenticate,
        }
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield SmtpServer(recorder, port)
    finally:
        for event in (recorder.hold_rcpt, recorder.hold_data):
            if event is not None:
                event.set()
        controller.stop()
