"""Error classification: which database failures are transient, data errors or bugs."""

from __future__ import annotations

import asyncpg
import pytest
import trio

from arcflow.store.classify import classify, classify_sqlstate


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("08000", "transient"),
        ("08006", "transient"),
        ("08001", "transient"),
        ("53300", "transient"),
        ("53100", "transient"),
        ("57P01", "transient"),
        ("57P02", "transient"),
        ("57P03", "transient"),
        ("40001", "transient"),
        ("40P01", "transient"),
        ("57014", "transient"),
        ("22P05", "data"),
        ("22021", "data"),
        ("22003", "data"),
        ("23505", "data"),
        ("23502", "data"),
        ("42P01", "bug"),
        ("42601", "bug"),
        ("XX000", "bug"),
        ("57000", "bug"),
    ],
)
def test_sqlstate_classes(code: str, kind: str) -> None:
    """Each SQLSTATE class maps to the documented kind."""
    assert classify_sqlstate(code) == kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(111, "refused"), "transient"),
        (ConnectionResetError(104, "reset"), "transient"),
        (OSError(113, "no route"), "transient"),
        (TimeoutError(), "transient"),
        (trio.TooSlowError(), "transient"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), "transient"),
        (asyncpg.exceptions.InterfaceError("connection is closed"), "transient"),
        (asyncpg.exceptions.AdminShutdownError("shutdown"), "transient"),
        (asyncpg.exceptions.CannotConnectNowError("starting"), "transient"),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), "transient"),
        (asyncpg.exceptions.SerializationError("ser"), "transient"),
        (asyncpg.exceptions.DeadlockDetectedError("dl"), "transient"),
        (asyncpg.exceptions.UntranslatableCharacterError("nul"), "data"),
        (asyncpg.exceptions.CharacterNotInRepertoireError("nul"), "data"),
        (asyncpg.exceptions.UniqueViolationError("dup"), "data"),
        (asyncpg.exceptions._base.DataError("bad value"), "data"),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate"), "data"),
        (asyncpg.exceptions.UndefinedTableError("no table"), "bug"),
        (RuntimeError("ours"), "bug"),
        (KeyError("x"), "bug"),
    ],
)
def test_exception_kinds(exc: BaseException, kind: str) -> None:
    """Exceptions asyncpg and the OS raise are classified by SQLSTATE first, then by type."""
    assert classify(exc) == kind
