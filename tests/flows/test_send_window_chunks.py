"""Chunks as flow runs with a send window (regression): a chunk run that sent everyone inside
their window counts as done; the recipients still outside wait for the campaign's next round
instead of being re-run until the attempts ran out and the campaign failed `chunk_failed`."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

import flows.send_chunk as send_chunk_module
from core.sender import send_chunk
from core.settings import Settings
from tests.core.test_send_window import WINDOW, _campaign, _rows, zones_now
from tests.fakes import FakeChannel


async def test_a_chunk_run_is_done_when_everyone_inside_the_window_is_sent(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, outside = zones_now()
    cid = _campaign(engine, [inside, outside, inside, outside])
    distributed = settings.model_copy(update={"distribute_chunks": True, "chunk_run_attempts": 3})
    monkeypatch.setattr(send_chunk_module, "get_read_engine", lambda _s: engine)
    monkeypatch.setattr(send_chunk_module, "get_run_logger", lambda: logging.getLogger("test"))
    keys: list[str] = []

    async def chunk_run(_name: str, parameters: dict[str, Any], **kw: Any) -> Any:
        keys.append(kw["idempotency_key"])
        await send_chunk(
            settings=distributed,
            engine=engine,
            campaign_id=cid,
            start=parameters["start"],
            end=parameters["end"],
            channel=FakeChannel(),
        )
        return SimpleNamespace(id=len(keys))

    async def completed(_run_id: Any, _timeout: float) -> Any:
        state = SimpleNamespace(
            is_completed=lambda: True, is_failed=lambda: False, name="Completed", message=""
        )
        return SimpleNamespace(state=state)

    monkeypatch.setattr(send_chunk_module, "arun_deployment", chunk_run)
    monkeypatch.setattr(send_chunk_module, "_wait_final", completed)
    await send_chunk_module.run_chunk_until_done(distributed, cid, "sms", 1, 0, 4, 1.0, WINDOW, ":w1")
    assert keys == [f"{cid}:v1:w1:0-4:1"]  # one run; the round is in its key
    assert [s for _z, s in _rows(engine, cid)] == ["sent", "pending", "sent", "pending"]
