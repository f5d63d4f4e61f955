"""The operator's report: counts, progress, top errors with a sample, markdown that renders."""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from core import report
from core.db import session_scope
from models import Message
from tests.core.test_sender import _started_campaign


def _set(engine: Engine, cid: str, changes: list[dict[str, object]]) -> None:
    with session_scope(engine) as session:
        ids = list(
            session.execute(
                select(Message.id).where(Message.campaign_id == cid).order_by(Message.seq)
            ).scalars()  # type: ignore[arg-type]
        )
        for mid, values in zip(ids, changes, strict=False):
            session.execute(update(Message).where(Message.id == mid).values(**values))  # type: ignore[arg-type]


def test_counts_progress_and_top_errors(engine: Engine) -> None:
    cid = _started_campaign(engine, n=8)
    _set(
        engine,
        cid,
        [
            {"status": "delivered"},
            {"status": "sent"},
            {"status": "failed", "error_code": "21211", "error_message": "Invalid 'To' | number"},
            {"status": "failed", "error_code": "21211", "error_message": "Invalid 'To' | number"},
            {"status": "undelivered", "error_code": "30003", "error_message": "Unreachable\nhandset"},
            {"status": "failed", "error_code": "21211", "error_message": "Invalid 'To' | number"},
            {"status": "sending"},
        ],
    )
    with session_scope(engine) as session:
        r = report.build(session, cid)
    assert r.total == 8 and r.dispatched == 6 and round(r.progress) == 75
    assert [(e.code, e.count) for e in r.errors] == [("21211", 3), ("30003", 1)]
    assert r.errors[0].sample == "Invalid 'To' | number" and r.errors[0].message_id.startswith("msg_")
    text = report.markdown(r)
    assert "**Dispatched:** 6 of 8 (75.0 %)" in text
    assert "| pending | 1 |" in text and "| sending | 1 |" in text and "| failed | 3 |" in text
    assert "| **failed_count** (undelivered + failed) | **4** |" in text
    # Table cells stay one cell: pipes escaped, line breaks folded.
    assert "| `21211` | 3 | Invalid 'To' \\| number (msg_" in text
    assert "Unreachable handset" in text
    assert report.table(r)[3] == {"metric": "failed", "value": 4}


def test_before_the_snapshot_nothing_is_dispatched(engine: Engine) -> None:
    from tests.factories import make_tenant

    tenant = make_tenant(engine, contacts_n=2)
    from core import campaigns
    from models.schemas import CampaignCreate

    with session_scope(engine) as session:
        c = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="draft",
                channel="sms",
                contact_list_id=tenant.list_id,
                sender_id=tenant.sender,
                body="Hi",
            ),
        )
        r = report.build(session, c.id)
    assert (r.dispatched, r.total, r.errors) == (0, 2, [])
    assert "## Top errors" not in report.markdown(r)
    assert r.key() != report.Report(**{**r.__dict__, "status": "processing"}).key()
