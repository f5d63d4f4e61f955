"""Signed one-click unsubscribe links (SPEC §10)."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy import Engine

from core import unsubscribe
from core.db import session_scope
from core.settings import Settings
from core.unsubscribe import Signer, with_link

SIGNER = Signer(b"k" * 32, "https://campaigns.example.com/")


def test_a_token_names_its_contact_and_account_and_verifies_without_the_database() -> None:
    token = SIGNER.token("acc_one", "cnt_two")
    assert SIGNER.verify(token) == ("acc_one", "cnt_two")
    assert SIGNER.url("acc_one", "cnt_two") == f"https://campaigns.example.com/v1/unsubscribe/{token}"
    assert "=" not in token and "/" not in token and "+" not in token


def test_a_forged_or_altered_token_is_refused() -> None:
    token = SIGNER.token("acc_one", "cnt_two")
    payload, mac = token.split(".")
    other = SIGNER.token("acc_one", "cnt_three")
    assert SIGNER.verify(other.split(".")[0] + "." + mac) is None  # another contact, this MAC
    assert SIGNER.verify(payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]) is None
    assert Signer(b"x" * 32).verify(token) is None  # another installation's key
    for junk in ("", ".", "abc", payload, "a" * 300 + "." + mac, token + "x", "é" * 10 + "." + mac):
        assert SIGNER.verify(junk) is None


def test_the_stored_key_is_made_once_and_shared(settings: Settings, engine: Engine) -> None:
    with session_scope(engine) as session:
        first = unsubscribe.signer(session, settings)
    unsubscribe._keys.clear()  # another process: reads the same key from the database
    with session_scope(engine) as session:
        second = unsubscribe.signer(session, settings)
    assert first.key == second.key and len(first.key) >= 32
    configured = settings.model_copy(update={"secret_key": SecretStr("s3cret" * 6)})
    with session_scope(engine) as session:
        assert unsubscribe.signer(session, configured).key == b"s3cret" * 6


def test_the_link_fills_the_placeholder_or_is_added_as_a_footer() -> None:
    url = "https://x.test/v1/unsubscribe/a.b?c=1&d=2"
    out = with_link({"body": "Bye: {{unsubscribe_url}}", "html": None, "subject": "S"}, url)
    assert out["body"] == f"Bye: {url}" and out["html"] is None and out["subject"] == "S"
    out = with_link({"body": "Hello", "html": "<html><body><p>Hi</p></body></html>", "subject": "S"}, url)
    assert out["body"].startswith("Hello\n") and out["body"].rstrip().endswith(url)
    assert out["html"].endswith("</body></html>")
    assert 'href="https://x.test/v1/unsubscribe/a.b?c=1&amp;d=2"' in out["html"]
    out = with_link({"body": "x", "html": '<a href="{{unsubscribe_url}}">stop</a>', "subject": None}, url)
    assert out["html"] == '<a href="https://x.test/v1/unsubscribe/a.b?c=1&amp;d=2">stop</a>'
