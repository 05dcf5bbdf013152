"""SMTP settings from the environment. Without CRMDB_SMTP_HOST there is no sender:
the worker leaves emails queued and says so once."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from crmdb.errors import CrmdbError

SECURITY = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str  # starttls, tls (implicit, SMTPS) or none
    user: str | None
    password: str | None
    sender: str  # the From header, e.g. "Sao Việt CRM <crm@saoviet.vn>"
    timeout: float = 30.0
    max_attempts: int = 8
    backoff: timedelta = timedelta(minutes=1)  # doubled at each failed attempt
    unsubscribe_url: str | None = None  # with {token}, e.g. https://crm/unsubscribe?t={token}
    ca_file: str | None = None  # PEM certificates to trust besides the system's (a private CA)

    @property
    def domain(self) -> str:
        """The domain of the sender's address (Message-IDs are made under it)."""
        address = self.sender.rsplit("<", 1)[-1].rstrip(">").strip()
        return address.rsplit("@", 1)[-1] if "@" in address else "localhost"


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CrmdbError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise CrmdbError(f"{name}={raw!r} must be from {low:g} to {high:g}")
    return value


def smtp_from_env(env: Mapping[str, str] = os.environ) -> SmtpConfig | None:
    """The SMTP settings, None when CRMDB_SMTP_HOST is unset; CrmdbError names a bad one."""
    host = env.get("CRMDB_SMTP_HOST", "").strip()
    if not host:
        return None
    security = env.get("CRMDB_SMTP_SECURITY", "starttls").strip().lower()
    if security not in SECURITY:
        raise CrmdbError(f"CRMDB_SMTP_SECURITY={security!r} is not one of {', '.join(SECURITY)}")
    port = int(_number(env, "CRMDB_SMTP_PORT", DEFAULT_PORTS[security], 1, 65535))
    user = env.get("CRMDB_SMTP_USER") or None
    password = env.get("CRMDB_SMTP_PASSWORD") or None
    if password and not user:
        raise CrmdbError("CRMDB_SMTP_PASSWORD is set without CRMDB_SMTP_USER")
    sender = env.get("CRMDB_SMTP_FROM", "").strip() or f"crmdb <noreply@{host}>"
    if "@" not in sender:
        raise CrmdbError(f"CRMDB_SMTP_FROM={sender!r} has no email address")
    ca_file = env.get("CRMDB_SMTP_CA_FILE") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise CrmdbError(f"CRMDB_SMTP_CA_FILE={ca_file!r} is not a file")
    url = env.get("CRMDB_EMAIL_UNSUBSCRIBE_URL") or None
    if url is not None and "{token}" not in url:
        raise CrmdbError(f"CRMDB_EMAIL_UNSUBSCRIBE_URL={url!r} must contain {{token}}")
    return SmtpConfig(
        host=host,
        port=port,
        security=security,
        user=user,
        password=password,
        sender=sender,
        timeout=_number(env, "CRMDB_SMTP_TIMEOUT", 30, 1, 600),
        max_attempts=int(_number(env, "CRMDB_SMTP_MAX_ATTEMPTS", 8, 1, 100)),
        backoff=timedelta(seconds=_number(env, "CRMDB_SMTP_BACKOFF_SECONDS", 60, 1, 86400)),
        unsubscribe_url=url,
        ca_file=ca_file,
    )
