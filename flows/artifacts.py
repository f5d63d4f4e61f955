"""The artifacts an operator reads on a send-campaign run in the Prefect UI.

- `progress-<campaign>`: messages dispatched / total, updated in place every PROGRESS_S.
- `report-<campaign>`: markdown with the counts by status, the top error codes (a sample
  message each) and credits; updated in place while sending and awaiting receipts (only when
  something changed), and written on every ending (completed, failed, cancelled, paused).
- `summary-<campaign>`: the summary table (SPEC §3), on every ending.
Each is created once per run and then updated, so a long campaign does not pile up versions."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from uuid import UUID

from core import report
from core.db import get_read_engine, in_session
from core.settings import get_settings

log = logging.getLogger("campaigns.flow")
PROGRESS_S = 2.0
REPORT_SENDING_S = 5.0
REPORT_WAITING_S = 30.0


def _key(kind: str, campaign_id: str) -> str:
    return f"{kind}-{campaign_id.replace('_', '-').lower()}"


class OperatorArtifacts:
    """The artifacts of one campaign within one flow run."""

    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id
        self._progress_id: UUID | None = None
        self._report_id: UUID | None = None
        self._last_progress = -1.0
        self._last_description = ""
        self._last_key: tuple[Any, ...] | None = None
        self._progress_at = 0.0
        self._report_at = 0.0
        # The heartbeat's ticks and the ending never interleave: each reads, then writes, alone
        # (a tick's older figures written after the ending's showed 0 % on a finished run).
        self._lock = asyncio.Lock()

    async def _build(self) -> report.Report:
        return await in_session(get_read_engine(get_settings()), report.build, self.campaign_id)

    async def _progress(self, r: report.Report) -> None:
        from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

        value = round(r.progress, 2)
        description = f"{r.dispatched:,} of {r.total:,} messages dispatched — {r.name} ({r.campaign_id})"
        if r.waiting:
            description += f" — quiet hours: {r.waiting.sentence()}"
        if self._progress_id is None:
            self._progress_id = await acreate_progress_artifact(
                progress=value, key=_key("progress", self.campaign_id), description=description
            )
        elif value != self._last_progress or description != self._last_description:
            await aupdate_progress_artifact(self._progress_id, value, description=description)
        self._last_progress = value
        self._last_description = description

    async def _report(self, r: report.Report) -> None:
        from prefect import get_client
        from prefect.artifacts import acreate_markdown_artifact
        from prefect.client.schemas.actions import ArtifactUpdate

        text = report.markdown(r)
        description = f"Campaign {r.campaign_id}: counts, top errors, credits"
        if self._report_id is None:
            self._report_id = await acreate_markdown_artifact(
                markdown=text, key=_key("report", self.campaign_id), description=description
            )
        else:
            async with get_client() as client:
                await client.update_artifact(self._report_id, ArtifactUpdate(data=text))
        self._last_key = r.key()

    async def tick(self) -> None:
        """Called every second by the run's heartbeat: refresh what is due."""
        now = time.monotonic()
        if now - self._progress_at < PROGRESS_S:
            return
        self._progress_at = now
        async with self._lock:
            r = await self._build()
            await self._progress(r)
            every = REPORT_SENDING_S if r.status in ("processing", "draft", "scheduled") else REPORT_WAITING_S
            if r.key() != self._last_key and now - self._report_at >= every:
                self._report_at = now
                await self._report(r)

    async def ending(self) -> None:
        """The run stops (finished, failed, cancelled or paused): write everything as it is."""
        from prefect.artifacts import acreate_table_artifact

        async with self._lock:
            r = await self._build()
            await self._progress(r)
            await self._report(r)
        await acreate_table_artifact(
            table=report.table(r),
            key=_key("summary", self.campaign_id),
            description=f"Summary of campaign {self.campaign_id} ({r.status})",
        )
