"""One-click unsubscribe (RFC 8058, SPEC §10): signed links, and opting a contact out of email.

A token names one contact of one account and carries an HMAC-SHA256 of both, so a link is
verified without a database lookup and cannot be forged or pointed at another contact:
`<base64url(account_id:contact_id)>.<base64url(first 16 bytes of the MAC)>`. The key is
CAMPAIGNS_SECRET_KEY, or else a random key the product makes once and keeps in the app
database (`app_secrets`), so every process (API, workers on other machines) signs alike."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from html import escape
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from core import optout
from core.errors import NotFound
from core.render import PLACEHOLDER, UNSUBSCRIBE_URL
from core.settings import Settings
from core.timeutil import utcnow
from models import AppSecret, Contact

KEY_NAME = "unsubscribe"
PURPOSE = b"campaigns/unsubscribe/email/v1:"
MAC_BYTES = 16
# Where links point when CAMPAIGNS_PUBLIC_URL is unset: `campaigns serve`'s default address.
LOCAL_URL = "http://127.0.0.1:8000"
TOKEN = re.compile(r"[A-Za-z0-9_-]{8,200}\.[A-Za-z0-9_-]{22}")
TEXT_FOOTER = "\n\n--\nUnsubscribe: {url}\n"
HTML_FOOTER = (
    '<p style="margin-top:24px;font-size:12px;color:#666666">'
    'Don\'t want these emails? <a href="{url}">Unsubscribe</a>.</p>'
)

_keys: dict[str, bytes] = {}
_keys_lock = threading.Lock()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    """Makes and checks unsubscribe tokens and links with one key."""

    key: bytes
    base_url: str = LOCAL_URL

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, PURPOSE + payload, hashlib.sha256).digest()[:MAC_BYTES]

    def token(self, account_id: str, contact_id: str) -> str:
        """The token of one contact of one account."""
        payload = f"{account_id}:{contact_id}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def url(self, account_id: str, contact_id: str) -> str:
        """The one-click link: POST unsubscribes, GET shows a confirmation page."""
        return f"{self.base_url.rstrip('/')}/v1/unsubscribe/{self.token(account_id, contact_id)}"

    def verify(self, token: str) -> tuple[str, str] | None:
        """(account_id, contact_id) of a genuine token, else None."""
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            return None
        encoded, mac = token.split(".", 1)
        try:
            payload, given = _unb64(encoded), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(payload), given):
            return None
        account_id, sep, contact_id = payload.decode("utf-8", "replace").partition(":")
        return (account_id, contact_id) if sep and account_id and contact_id else None


def ensure_key(session: Session) -> bytes:
    """The product's own key, made on first use (a concurrent first use keeps the winner's).
    `migrate` calls this in a transaction of its own, so the key is committed before any
    process signs or checks a link."""
    row = session.get(AppSecret, KEY_NAME)
    if row is None:
        try:
            with session.begin_nested():
                session.add(AppSecret(name=KEY_NAME, value=secrets.token_urlsafe(32), created_at=utcnow()))
                session.flush()
        except IntegrityError:
            pass
        row = session.get(AppSecret, KEY_NAME, populate_existing=True)
        assert row is not None
    return row.value.encode()


def signer(session: Session, settings: Settings) -> Signer:
    """The signer of this installation (its stored key read once per process and database)."""
    base = settings.public_url or LOCAL_URL
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return Signer(settings.secret_key.get_secret_value().encode(), base)
    url = str(session.get_bind().engine.url)
    with _keys_lock:
        key = _keys.get(url)
    if key is None:
        stored = session.get(AppSecret, KEY_NAME)
        if stored is None:  # a database `migrate` never saw: made here, but not cached until
            return Signer(ensure_key(session), base)  # a later read finds it committed
        key = stored.value.encode()
        with _keys_lock:
            _keys[url] = key
    return Signer(key, base)


def _fill(text: str, value: str) -> str:
    return PLACEHOLDER.sub(lambda m: value if m.group(1) == UNSUBSCRIBE_URL else m.group(0), text)


def with_link(fields: dict[str, Any], url: str) -> dict[str, Any]:
    """An email's body, html and subject with its unsubscribe link: `{{unsubscribe_url}}` filled
    in, and a short footer added to a part that does not show the link."""
    out = dict(fields)
    body, html, subject = out.get("body"), out.get("html"), out.get("subject")
    if isinstance(subject, str) and "{{" in subject:
        out["subject"] = _fill(subject, url)
    if isinstance(body, str):
        filled = _fill(body, url) if "{{" in body else body
        out["body"] = filled if url in filled else filled.rstrip("\n") + TEXT_FOOTER.format(url=url)
    if isinstance(html, str):
        link = escape(url, quote=True)
        filled = _fill(html, link) if "{{" in html else html
        if link not in filled:
            footer = HTML_FOOTER.format(url=link)
            at = filled.lower().rfind("</body>")
            filled = filled[:at] + footer + filled[at:] if at >= 0 else filled + footer
        out["html"] = filled
    return out


def find_contact(session: Session, settings: Settings, token: str) -> Contact:
    """The contact a genuine token names (NotFound for a bad token or a deleted contact)."""
    named = signer(session, settings).verify(token)
    contact = session.get(Contact, named[1]) if named else None
    if named is None or contact is None or contact.account_id != named[0]:
        raise NotFound("this unsubscribe link is not valid")
    return contact


def unsubscribe(session: Session, settings: Settings, token: str) -> Contact:
    """Opt the token's contact out of email (idempotent: a second click changes nothing)."""
    contact = find_contact(session, settings, token)
    optout.leave_channel(session, channel="email", contact_ids=[contact.id])
    return contact
