"""The admin commands of the CLI, run as a user would (a subprocess per command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core import accounts, credits
from core.db import make_engine, session_scope


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMPAIGNS_DATA_DIR": str(tmp_path)}
    env.pop("CAMPAIGNS_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'campaigns.db'}")


def test_bootstrap_an_account(tmp_path: Path, db: Engine) -> None:
    r = run(tmp_path, "accounts", "create", "Acme", "--credits", "500", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["account_id"].startswith("acc_") and len(created["api_key"]) > 30
    with session_scope(db) as session:
        account = accounts.account_for_key(session, key=created["api_key"])
        assert account is not None and account.id == created["account_id"]
        assert credits.get_balance(session, account.id).balance == 500
    assert created["api_key"] not in (tmp_path / "campaigns.db").read_bytes().decode("latin-1")

    r = run(tmp_path, "credits", "add", created["account_id"], "250", "--json")
    assert json.loads(r.stdout)["balance"] == 750

    r = run(
        tmp_path, "sender-ids", "add", created["account_id"], "--channel", "sms", "--value", "ACME", "--json"
    )
    sender = json.loads(r.stdout)
    assert sender["status"] == "pending"
    assert (
        json.loads(run(tmp_path, "sender-ids", "approve", sender["id"], "--json").stdout)["status"]
        == "approved"
    )
    assert (
        json.loads(run(tmp_path, "sender-ids", "reject", sender["id"], "--json").stdout)["status"]
        == "rejected"
    )


def test_errors_exit_non_zero(tmp_path: Path) -> None:
    r = run(tmp_path, "credits", "add", "acc_missing", "5")
    assert r.returncode == 1 and "not found" in r.stderr
    r = run(tmp_path, "sender-ids", "add", "acc_missing", "--channel", "sms", "--value", "X", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"] == "not_found"
