"""Opening the database a run or a report uses: a DSN, the ``PG*`` variables, or the embedded server."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatabaseUnavailable, TransientWriteError
from .dsn import EMBEDDED, redact_dsn, redact_text, resolve_dsn
from .embedded import start_embedded
from .postgres import Store

__all__ = ["open_store"]


async def open_store(
    db: str | None,
    data_dir: Path | str,
    *,
    statement_timeout: float = 30.0,
    tcp_keepalive: float | None = 10.0,
    for_reading: bool = False,
) -> Store:
    """A connected :class:`Store` on the database ``db`` names; close it with ``aclose()``.

    ``db`` is a DSN; None means ``ARCFLOW_DB``, then the ``PG*`` variables,
    then the embedded server under ``data_dir`` (started if need be).  A run
    (``for_reading=False``) creates or migrates the arcflow schema; a reader
    creates nothing: no embedded server yet, or no schema, is an error saying
    so.  Any failure to connect is :class:`DatabaseUnavailable` with the DSN
    redacted.
    """
    dsn = resolve_dsn(db)
    if dsn == EMBEDDED:
        if for_reading and not (Path(data_dir) / "pg").is_dir():
            raise DatabaseUnavailable(
                f"no embedded database under {data_dir}: nothing has run here yet; "
                "give --db DSN (or ARCFLOW_DB, or db in arcflow.toml) to read another database"
            )
        dsn = await start_embedded(data_dir)
    store = Store(dsn, statement_timeout=statement_timeout, tcp_keepalive=tcp_keepalive)
    try:
        try:
            await store.connect()
        except TransientWriteError:
            raise
        except Exception as exc:  # refused credentials, no such database, a malformed DSN
            raise DatabaseUnavailable(
                f"cannot connect to the database {redact_dsn(dsn)}: "
                f"{redact_text(_describe(exc), dsn)}"
            ) from None
        if not for_reading:
            await store.migrate()
        elif await store.fetchval("SELECT to_regclass('arcflow.runs')") is None:
            raise DatabaseUnavailable(
                f"no arcflow runs in {redact_dsn(dsn)}: the arcflow schema does not exist"
            )
    except TransientWriteError as exc:
        await store.aclose()
        raise DatabaseUnavailable(
            f"cannot reach the database {redact_dsn(dsn)}: {redact_text(str(exc), dsn)}"
        ) from None
    except BaseException:
        await store.aclose()
        raise
    return store


#: What to do about a connection refused for these SQLSTATEs.
_HINTS = {
    "28P01": "check the password in the DSN (or PGPASSWORD)",
    "28000": "check the user name, or create the role",
    "3D000": "create the database, or fix its name in the DSN",
    "42501": "grant the user the right to connect and create the arcflow schema",
}


def _describe(exc: BaseException) -> str:
    """One line for a refused connection: the server's or the parser's words, and what to do."""
    code = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = _HINTS.get(code) if isinstance(code, str) else None
    if hint is None and isinstance(exc, ValueError):
        hint = "the DSN is malformed: postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    return f"{text} ({hint})" if hint else text
