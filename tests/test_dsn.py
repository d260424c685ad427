"""Choosing the database and redacting its password everywhere it could be shown."""

from __future__ import annotations

import pytest

from arcflow.store.dsn import EMBEDDED, redact_dsn, redact_text, resolve_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://alice:s3cret@db.example:5432/app",
            "postgresql://alice:***@db.example:5432/app",
        ),
        ("postgresql://alice@db/app", "postgresql://alice@db/app"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/x",
            "postgresql://postgres@/postgres?host=/tmp/x",
        ),
        (
            "postgres://u:p%40ss@h/d?password=zz&sslmode=require",
            "postgres://u:***@h/d?password=***&sslmode=require",
        ),
        ("host=h port=5 password=secret user=u", "host=h port=5 password=*** user=u"),
        (None, "(from PG* environment)"),
    ],
)
def test_redact_dsn(dsn: str | None, shown: str) -> None:
    """Passwords in URLs, query strings and key=value DSNs are replaced by ***."""
    assert redact_dsn(dsn) == shown


def test_redact_text_removes_password_from_any_message() -> None:
    """A driver message that echoes the DSN or the bare password is cleaned."""
    dsn = "postgresql://alice:hunter2@h/d"
    message = f"could not connect to {dsn}; auth failed for password hunter2"
    cleaned = redact_text(message, dsn)
    assert "hunter2" not in cleaned
    assert "postgresql://alice:***@h/d" in cleaned


def test_resolve_precedence() -> None:
    """--db beats ARCFLOW_DB, which beats PG* variables, which beat the embedded server."""
    env = {"ARCFLOW_DB": "postgresql://env/db", "PGHOST": "pghost"}
    assert resolve_dsn("postgresql://flag/db", env) == "postgresql://flag/db"
    assert resolve_dsn(None, env) == "postgresql://env/db"
    assert resolve_dsn(None, {"PGHOST": "pghost"}) is None  # asyncpg reads PG* itself
    assert resolve_dsn(None, {}) == EMBEDDED


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("host=h password='two words' user=u", "two words"),
        (r"password='it\'s here' host=h", "it's here"),
        ("host=h sslpassword=k2 password = 'a b'", "a b"),
        ("postgresql://u:pw-1@h/db?sslpassword=zz-2", "zz-2"),
    ],
)
def test_quoted_and_every_password_is_redacted(dsn: str, secret: str) -> None:
    """Quoted key=value passwords (with escapes) and every password of a DSN are redacted, alone or in the DSN."""
    assert secret not in redact_dsn(dsn)
    message = f"could not connect with {dsn}: password {secret!s} was refused"
    assert secret not in redact_text(message, dsn)
