"""Fake provider servers on loopback, shared by the contract tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.fake_server import FakeProviders, ServerThread, SmtpServer


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeProviders]:
    providers = FakeProviders()
    with ServerThread(providers.app) as server:
        providers.url = server.url  # type: ignore[attr-defined]
        yield providers


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server
