"""Prefect global concurrency limits that keep several workers under a provider's limits.

A campaign sending through a real provider holds one slot of `campaigns-<channel>-<sender>`
(created with limit 1 when missing) for its whole sending phase, so across all workers one
campaign at a time sends for a sender, paced by the in-process limiter at
CAMPAIGNS_<CHANNEL>__RATE_PER_SECOND. Operators may raise a limit in the Prefect UI (each slot
then paces on its own). One acquisition per run: Prefect's limits cost 100-200 ms a call and
waiting for a held slot polls with backoff, which per chunk halved throughput (measured)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from core.settings import Settings


def limit_name(channel: str, sender: str) -> str:
    """The limit's name (Prefect names allow letters, digits, '-', '_' and '.')."""
    return f"campaigns-{channel}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", sender)[:80]


async def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the limit if it does not exist; never change one an operator tuned."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )


@contextlib.asynccontextmanager
async def provider_slot(settings: Settings, channel: str, sender: str) -> AsyncIterator[None]:
    """Hold the sender's global slot for a real provider; nothing for the sandbox."""
    if not settings.global_limits or settings.channel(channel).provider == "sandbox":
        yield
        return
    from prefect.concurrency.asyncio import concurrency

    name = limit_name(channel, sender)
    await ensure_limit(name)
    async with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield
