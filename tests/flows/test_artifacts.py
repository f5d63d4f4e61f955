"""What an operator sees on a send-campaign run: its name, tags and artifacts, on every ending."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine

from core import campaigns, contacts, lifecycle
from core.db import session_scope
from models.schemas import CampaignCreate, ContactCreate
from tests.factories import Tenant, make_tenant

pytestmark = pytest.mark.prefect


def _create(engine: Engine, tenant: Tenant, name: str) -> str:
    data = {
        "name": name,
        "channel": "sms",
        "contact_list_id": tenant.list_id,
        "sender_id": tenant.sender,
        "body": "Hi {{first_name}}",
    }
    with session_scope(engine) as session:
        return campaigns.create_campaign(
            session, account_id=tenant.account_id, data=CampaignCreate.model_validate(data)
        ).id


async def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key.split("-")[0]: a for a in found if a.key}


def _table(artifact: Any) -> dict[str, Any]:
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return {row["metric"]: row["value"] for row in rows}


async def test_a_completed_run_shows_progress_report_and_summary(flow_engine: Engine) -> None:
    from flows.send_campaign import send_campaign

    tenant = make_tenant(flow_engine, credits_amount=50, contacts_n=4, name="artifacts")
    with session_scope(flow_engine) as session:  # one recipient the provider rejects
        contacts.create_contact(
            session,
            account_id=tenant.account_id,
            data=ContactCreate(name="Bad", phone="+15005550001", lists=[tenant.list_id]),
        )
    cid = _create(flow_engine, tenant, "Spring | sale")
    state = await send_campaign(cid, return_state=True)
    assert state.is_completed()
    artifacts = await _artifacts(state.state_details.flow_run_id)
    assert set(artifacts) == {"progress", "report", "summary"}
    assert artifacts["progress"].type == "progress" and float(artifacts["progress"].data) == 100.0
    report = artifacts["report"]
    assert report.type == "markdown" and report.key == f"report-{cid.replace('_', '-')}"
    text = str(report.data)
    assert f"({cid})" in text and "Spring \\| sale" in text and "**Status:** completed" in text
    assert "| delivered | 4 |" in text and "| failed | 1 |" in text
    assert "## Top errors" in text and "| `invalid_recipient` | 1 |" in text
    assert "sandbox: invalid recipient +15005550001" in text
    assert "**Credits:** 4 used · 0 still reserved" in text
    table = _table(artifacts["summary"])
    assert table["status"] == "completed" and table["delivered"] == 4 and table["failed"] == 1


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_every_ending_writes_the_report(flow_engine: Engine, ending: str) -> None:
    """Before: the summary appeared only on completion, never on failure or cancel."""
    from flows.send_campaign import send_campaign

    tenant = make_tenant(
        flow_engine, credits_amount=3 if ending == "failed" else 50, contacts_n=2, name=ending
    )
    cid = _create(flow_engine, tenant, f"ends {ending}")
    with session_scope(flow_engine) as session:
        if ending == "cancelled":
            lifecycle.cancel(session, campaign=lifecycle.load(session, cid))
        else:  # the snapshot finds more recipients than were paid for
            contacts.create_contact(
                session,
                account_id=tenant.account_id,
                data=ContactCreate(name="Late", phone="+14155559999", lists=[tenant.list_id]),
            )
            contacts.create_contact(
                session,
                account_id=tenant.account_id,
                data=ContactCreate(name="Later", phone="+14155559998", lists=[tenant.list_id]),
            )
    state = await send_campaign(cid, return_state=True)
    assert state.is_cancelled() if ending == "cancelled" else state.is_failed()
    artifacts = await _artifacts(state.state_details.flow_run_id)
    assert {"report", "summary"} <= set(artifacts)
    assert f"**Status:** {ending}" in str(artifacts["report"].data)
    if ending == "failed":
        assert "**Failure reason:** insufficient_credits" in str(artifacts["report"].data)
    assert _table(artifacts["summary"])["status"] == ending
