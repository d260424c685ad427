"""Choosing the database, and never printing its password."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

EMBEDDED = "embedded"


def redact_dsn(dsn: str | None) -> str:
    """``dsn`` with any password replaced by ``***``; works on URLs and key=value strings."""
    if not dsn:
        return "(from PG* environment)" if dsn is None else ""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return re.sub(r"//[^@/]*@", "//***@", dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, _sep, password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if password else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = [
                (k, "***" if k.lower() in ("password", "sslpassword") else v)
                for k, v in parse_qsl(query, keep_blank_values=True)
            ]
            query = urlencode(pairs, safe="/*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def redact_text(text: str, dsn: str | None) -> str:
    """Remove the password of ``dsn`` from an arbitrary message."""
    if not dsn:
        return text
    password = None
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
    else:
        m = re.search(r"password\s*=\s*(\S+)", dsn, flags=re.IGNORECASE)
        password = m.group(1) if m else None
    if password:
        text = text.replace(password, "***")
    return text.replace(dsn, redact_dsn(dsn))


def resolve_dsn(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Which database to use: ``--db`` > ``ARCFLOW_DB`` > ``PG*`` variables > embedded.

    Returns a DSN, ``None`` for "asyncpg reads the PG* variables", or
    :data:`EMBEDDED` for the embedded server.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("ARCFLOW_DB"):
        return env["ARCFLOW_DB"]
    if any(env.get(name) for name in _PG_ENV):
        return None
    return EMBEDDED
