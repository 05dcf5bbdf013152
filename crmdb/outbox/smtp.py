"""Delivery through SMTP, telling apart what may be retried from what may not.

Up to the end of the DATA command nothing is accepted: a refusal or a dropped
connection before it is safe to retry. Once the message and its final "." are on the
wire the server may have accepted it; if its reply is lost (the connection drops) the
outcome is unknown, and at most once means it is not sent again.
"""

import base64
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from crmdb.outbox.config import SmtpConfig

# What finish_email records: sent, queued (retry later), dead (refused for good), unknown.
SENT, RETRY, DEAD, UNKNOWN = "sent", "queued", "dead", "unknown"


@dataclass(frozen=True)
class Delivery:
    outcome: str
    error: str | None = None


def _reply(stage: str, code: int, message: bytes | str) -> Delivery:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    error = f"{stage}: {code} {' '.join(text.split())}"
    return Delivery(RETRY if 400 <= code < 500 or code < 200 else DEAD, error)


def _payload(message: EmailMessage) -> bytes:
    data = message.as_bytes(policy=SMTP_POLICY)
    data = re.sub(rb"(?m)^\.", b"..", data)  # dot-stuffing (RFC 5321 4.5.2)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH PLAIN in UTF-8 (RFC 4616) where offered: smtplib's own login encodes the
    credentials as ASCII, and a Vietnamese password would never get through."""
    if "PLAIN" not in smtp.esmtp_features.get("auth", "").upper().split():
        smtp.login(user, password)
        return
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    code, text = smtp.docmd("AUTH", f"PLAIN {token}")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, text)


class SmtpSession:
    """One connection to the server for a batch; reopened after it breaks."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        c = self.config
        context = ssl.create_default_context()
        if c.ca_file:
            context.load_verify_locations(cafile=c.ca_file)
        smtp: smtplib.SMTP
        if c.security == "tls":
            smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=context)
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        try:
            smtp.ehlo()
            if c.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if c.user:
                _login(smtp, c.user, c.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(
        self,
        message: EmailMessage,
        sender: str,
        recipient: str,
        transmitting: Callable[[], bool] = lambda: True,
    ) -> Delivery:
        """Deliver one message; never raises for the server's or the network's sake.

        `transmitting` is called once the server is ready for the message, before it is
        sent: it records (commits) that the point of no return is reached. If it says
        False (the claim is gone) or raises, the connection is dropped mid-DATA, which
        makes the server discard the message.
        """
        try:
            if self._smtp is None:
                self._smtp = self._open()
            smtp = self._smtp
            code, text = smtp.mail(sender)
            if code != 250:
                smtp.rset()
                return _reply("MAIL FROM", code, text)
            code, text = smtp.rcpt(recipient)
            if code not in (250, 251):
                smtp.rset()
                return _reply("RCPT TO", code, text)
            code, text = smtp.docmd("DATA")
            if code != 354:
                smtp.rset()
                return _reply("DATA", code, text)
        except smtplib.SMTPResponseException as exc:
            # Refused before any message (STARTTLS, AUTH): the settings or the server are
            # at fault, not this email; retried, so a wrong password kills no email at once.
            self.close()
            return Delivery(RETRY, _reply("connect", exc.smtp_code, exc.smtp_error).error)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            self.close()
            return Delivery(RETRY, f"connect: {type(exc).__name__}: {exc}")
        try:
            ready = transmitting()
        except BaseException:
            self.close(abort=True)
            raise
        if not ready:
            self.close(abort=True)
            return Delivery(RETRY, "the claim was lost before transmission")
        # From here on the server may accept the message whatever we hear back.
        try:
            smtp.send(_payload(message))
            code, text = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            return Delivery(UNKNOWN, f"after the message was sent: {type(exc).__name__}: {exc}")
        if code == 250:
            return Delivery(SENT)
        return _reply("end of DATA", code, text)

    def close(self, *, abort: bool = False) -> None:
        if self._smtp is not None:
            try:
                if abort:
                    raise OSError("abort")
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None
