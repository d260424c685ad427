"""Choosing the database, and never printing its password."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

EMBEDDED = "embedded"

#: ``password=VALUE`` in a key=value DSN: VALUE quoted (``'two words'``, ``\'`` escapes) or bare.
_KV_PASSWORD = re.compile(r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


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
    return _KV_PASSWORD.sub(r"\1***", dsn)


def redact_text(text: str, dsn: str | None) -> str:
    """Remove the passwords of ``dsn`` (the DSN itself, and each password alone) from a message."""
    if not dsn:
        return text
    text = text.replace(dsn, redact_dsn(dsn))
    secrets: list[str] = []
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            if parts.password:
                secrets.append(parts.password)
            secrets += [
                v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "sslpassword")
            ]
        except ValueError:
            pass
    else:
        for m in _KV_PASSWORD.finditer(dsn):
            value = m.group(2)
            secrets.append(value)
            if value.startswith("'"):  # and the value itself, unquoted
                secrets.append(re.sub(r"\\(.)", r"\1", value[1:-1]))
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


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
