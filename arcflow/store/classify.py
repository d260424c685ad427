"""Error classification: the one place that decides what a database failure means.

=================  ===================================================  ======================
kind               what                                                 the writer then
=================  ===================================================  ======================
``transient``      connection lost/refused, OS and timeout errors,       retries the whole batch
                   asyncpg's InternalClientError after a lost connection
                   SQLSTATE class 08 (connection), 53 (resources),      with backoff; counts
                   57P01-57P03 (shutdown, cannot connect now),          toward the breaker;
                   40001 (serialization), 40P01 (deadlock)              spills when exhausted
``data``           SQLSTATE class 22 (data exception), 23               bisects the batch and
                   (integrity constraint violation) and 54 (program     dead-letters the poison
                   limit exceeded: an index entry or a jsonb value too
                   large, nesting too deep); values the client cannot
                   encode (asyncpg DataError, UnicodeError)
``bug``            anything else (syntax, undefined table, our code)    escalates: the actor
                                                                        crashes and the
                                                                        supervisor restarts it
=================  ===================================================  ======================
"""

from __future__ import annotations

import asyncio
from typing import Literal

import asyncpg
import trio

Kind = Literal["transient", "data", "bug"]

TRANSIENT_CLASSES = ("08", "53")
TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "57014"})
DATA_CLASSES = ("22", "23", "54")


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of an asyncpg error, or None."""
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def classify_sqlstate(code: str) -> Kind:
    """Classify a five-character SQLSTATE."""
    if code.startswith(TRANSIENT_CLASSES) or code in TRANSIENT_CODES:
        return "transient"
    if code.startswith(DATA_CLASSES):
        return "data"
    return "bug"


def classify(exc: BaseException) -> Kind:
    """Classify an exception raised while talking to PostgreSQL.

    57014 (query_canceled) is transient: it is what ``statement_timeout`` raises.
    """
    code = sqlstate_of(exc)
    if code is not None:
        return classify_sqlstate(code)
    # Client-side encoding failures of one record's values: a data problem.
    if isinstance(exc, asyncpg.exceptions._base.DataError | UnicodeError):
        return "data"
    if isinstance(
        exc,
        OSError
        | ConnectionError
        | TimeoutError
        | asyncio.TimeoutError
        | trio.TooSlowError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.InternalClientError,
    ):
        return "transient"
    if isinstance(exc, EOFError):
        return "transient"
    return "bug"
