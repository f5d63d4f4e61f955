"""Email over SMTP (aiosmtplib): one connection per chunk, reused for every message.

A 250 after DATA means the relay accepted the message: delivered for this service (SPEC). Per
recipient, 4xx replies are transient and 5xx permanent; a dropped connection is reopened."""

from __future__ import annotations

import asyncio
import email.policy
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib
from pydantic import BaseModel, SecretStr

from channels.base import (
    NoSentLookup,
    OutboundMessage,
    PermanentSendError,
    ProviderConfigError,
    SendResult,
    StatusUpdate,
    TransientSendError,
)


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: SecretStr = SecretStr("")
    starttls: bool = False


def header_value(value: str) -> str:
    """A header value on one line: CR, LF and other line breaks become spaces (a personalized
    subject must never add headers, and the email package refuses line breaks)."""
    return " ".join(value.splitlines()).strip()


def build_email(message: OutboundMessage, message_id: str) -> EmailMessage:
    """A UTF-8 email with the headers bulk mail needs: text only, or multipart/alternative
    (text part first, HTML last: clients show the last part they can render), and RFC 8058
    one-click unsubscribe when the message has its link."""
    email = EmailMessage()
    email["From"] = header_value(message.sender)
    email["To"] = header_value(message.to)
    email["Subject"] = header_value(message.subject or "")
    email["Date"] = formatdate(usegmt=True)
    email["Message-ID"] = message_id
    if message.unsubscribe_url:
        email["List-Unsubscribe"] = f"<{header_value(message.unsubscribe_url)}>"
        email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    else:
        email["List-Unsubscribe"] = f"<mailto:{header_value(message.sender)}?subject=unsubscribe>"
    email["X-Campaign-ID"] = message.campaign_id
    email.set_content(message.body or "", charset="utf-8")
    if message.html is not None:
        email.add_alternative(message.html, subtype="html", charset="utf-8")
    return email


# Header lines up to SMTP's 998: an unfoldable header longer than 78 characters (the one-click
# List-Unsubscribe URL) would otherwise go out as an RFC 2047 encoded-word, which RFC 2369 and
# RFC 8058 do not allow there and mailbox providers then ignore. (aiosmtplib's send_message
# flattens with 78.)
MAX_HEADER_LINE = 998


def wire_bytes(message: EmailMessage, *, utf8: bool = False, eight_bit: bool = True) -> bytes:
    """The message as it goes on the wire: CRLF line ends, headers unfolded up to 998
    characters, 8-bit bodies only where the relay takes 8BITMIME."""
    policy = (email.policy.SMTPUTF8 if utf8 else email.policy.SMTP).clone(
        max_line_length=MAX_HEADER_LINE, cte_type="8bit" if eight_bit else "7bit"
    )
    return message.as_bytes(policy=policy)


async def transmit(smtp: aiosmtplib.SMTP, message: EmailMessage, sender: str, to: str) -> Any:
    """MAIL/RCPT/DATA of one message with our own flattening (see MAX_HEADER_LINE), choosing
    SMTPUTF8 and 8BITMIME as aiosmtplib's send_message does."""
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()
    options = []
    utf8 = not (sender + to).isascii()
    if utf8:
        if not smtp.supports_extension("smtputf8"):
            raise PermanentSendError(
                "the address is not ASCII and the relay does not support SMTPUTF8", code="smtputf8"
            )
        options.append("SMTPUTF8")
    eight_bit = smtp.supports_extension("8bitmime")
    if eight_bit:
        options.append("BODY=8BITMIME")
    data = wire_bytes(message, utf8=utf8, eight_bit=eight_bit)
    return await smtp.sendmail(sender, [to], data, mail_options=options)


def _classify(code: int, text: str) -> Exception:
    if 400 <= code < 500:
        return TransientSendError(f"SMTP {code}: {text}", code=str(code))
    return PermanentSendError(f"SMTP {code}: {text}", code=str(code))


class SmtpChannel(NoSentLookup):
    """SMTP adapter."""

    name = "email"
    # Relays differ (and throttle with 421/451); one connection per chunk sends serially.
    default_rate_per_second: float | None = 20.0
    default_concurrency = 4
    supports_status_lookup = False

    def __init__(self, settings: SmtpSettings, *, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.settings.host,
            port=self.settings.port,
            start_tls=self.settings.starttls,
            timeout=self.timeout,
        )
        try:
            await smtp.connect()
            if self.settings.username:
                await smtp.login(self.settings.username, self.settings.password.get_secret_value())
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ProviderConfigError(f"SMTP login refused: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientSendError(f"cannot open an SMTP session: {exc}", code="connection_error") from exc
        return smtp

    async def open(self) -> None:
        """Connections open lazily, on the first message."""

    async def close(self) -> None:
        """QUIT the session."""
        if self.smtp is not None:
            try:
                await self.smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None

    async def send(self, message: OutboundMessage) -> SendResult:
        """MAIL/RCPT/DATA over the chunk's connection; 250 → delivered (accepted by the relay)."""
        domain = message.sender.rsplit("@", 1)[-1] or "localhost"
        message_id = make_msgid(idstring=message.message_id, domain=domain)
        email = build_email(message, message_id)
        async with self._lock:  # one SMTP transaction at a time per connection
            if self.smtp is None or not self.smtp.is_connected:
                self.smtp = await self._connect()
            try:
                refused, _reply = await transmit(self.smtp, email, message.sender, message.to)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                first = exc.recipients[0]
                raise _classify(first.code, first.message) from exc
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421:  # the server is closing the session: reconnect next time
                    self.smtp.close()
                    self.smtp = None
                raise _classify(exc.code, exc.message) from exc
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                if self.smtp is not None:
                    self.smtp.close()
                self.smtp = None
                raise TransientSendError(f"SMTP connection lost: {exc}", code="connection_error") from exc
        if message.to in refused:
            response = refused[message.to]
            raise _classify(response.code, response.message)
        return SendResult(provider_message_id=message_id.strip("<>"), status="delivered")

    async def fetch_status(self, provider_message_id: str, sent_at: datetime | None) -> StatusUpdate | None:
        """A relay's 250 is final for this service."""
        return None
