"""Prefixed, unguessable ids (96 random bits) and API keys."""

from __future__ import annotations

import hashlib
import secrets


def new_id(prefix: str) -> str:
    """A new id like `cmp_3f9a…` with 96 random bits."""
    return f"{prefix}_{secrets.token_hex(12)}"


def new_api_key() -> str:
    """A new API key; only its hash is stored."""
    return "ck_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of a key: keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()
