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


def test_a_key_made_in_a_transaction_that_rolls_back_is_not_kept(settings: Settings, engine: Engine) -> None:
    """Regression: the first use of a fresh database was a bad-token request; its transaction
    rolled back, yet the key it made stayed cached in that API process, so every genuine link
    the workers signed with the committed key was a 404 there."""
    import pytest
    from sqlalchemy import delete

    from core.errors import NotFound
    from models import AppSecret

    with session_scope(engine) as session:
        assert session.get(AppSecret, unsubscribe.KEY_NAME) is not None  # made by migrate
        session.execute(delete(AppSecret))
    unsubscribe._keys.clear()
    with pytest.raises(NotFound), session_scope(engine) as session:
        unsubscribe.find_contact(session, settings, "A" * 30 + "." + "B" * 22)
    api_memory = dict(unsubscribe._keys)  # what the API process remembers
    unsubscribe._keys.clear()  # a worker process signs: the key is made and committed
    with session_scope(engine) as session:
        worker = unsubscribe.signer(session, settings)
    unsubscribe._keys.clear()
    unsubscribe._keys.update(api_memory)  # back in the API process: it checks with the same key
    for _ in range(2):
        with session_scope(engine) as session:
            assert unsubscribe.signer(session, settings).key == worker.key


def test_leaving_a_channel_twice_or_at_once_adds_one_row(db: Engine) -> None:
    """Two one-click POSTs (or a POST and a spam report) for one contact: one row, no 500."""
    from sqlalchemy import select

    from core import optout
    from models import ChannelOptOut, Contact
    from tests.factories import make_tenant

    tenant = make_tenant(db, contacts_n=1, name="race", phone_base=14155580000)
    with session_scope(db) as session:
        cid = session.execute(select(Contact.id).where(Contact.account_id == tenant.account_id)).scalar_one()
    import threading

    results: list[int] = []

    def leave() -> None:
        with session_scope(db) as session:
            results.append(optout.leave_channel(session, channel="email", contact_ids=[cid, cid]))

    threads = [threading.Thread(target=leave) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 0, 0, 1]
    with session_scope(db) as session:
        rows = session.execute(select(ChannelOptOut.channel).where(ChannelOptOut.contact_id == cid)).all()
    assert [r[0] for r in rows] == ["email"]
