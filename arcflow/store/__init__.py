"""The store: PostgreSQL schema, connection, error classification and the embedded server."""

from .classify import classify, classify_sqlstate
from .connect import open_store
from .dsn import EMBEDDED, redact_dsn, resolve_dsn
from .embedded import start_embedded
from .postgres import Store, encode_outcome

__all__ = [
    "EMBEDDED",
    "Store",
    "classify",
    "classify_sqlstate",
    "encode_outcome",
    "open_store",
    "redact_dsn",
    "resolve_dsn",
    "start_embedded",
]
