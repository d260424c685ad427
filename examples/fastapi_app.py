"""arcflow inside a FastAPI service: each request records one outcome, written in batches.

The service already has its results (a grader, a model, a check); arcflow is
only its durable, batched writer.  ``POST /results`` hands one outcome to
the runtime and answers once the runtime has accepted it; rows reach
PostgreSQL a batch at a time.  Stopping the server (Ctrl-C, SIGTERM) drains
the runtime in the lifespan's shutdown: nothing accepted is lost.

Run it (the database comes from ``ARCFLOW_DB``, then the ``PG*`` variables,
then the embedded server under ``.arcflow/``)::

    pip install -e ".[web,embedded]"
    ARCFLOW_DB=postgresql://user@localhost/db uvicorn examples.fastapi_app:app --port 8000
    curl -X POST localhost:8000/results -H 'content-type: application/json' \\
         -d '{"id": "case-1", "status": "passed", "score": 0.9}'

Every option of ``python -m arcflow`` applies, with the same layering
(``ARCFLOW_*`` variables over ``arcflow.toml`` over defaults), through
:func:`arcflow.load_settings`: ``ARCFLOW_BATCH_SIZE``, ``ARCFLOW_DATA_DIR``,
``ARCFLOW_FLUSH_INTERVAL`` (this service's default: 5 s) and so on.
``ARCFLOW_RUN_ID`` names the run (default: a new id per process).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

import arcflow
import arcflow.aio


class ResultIn(BaseModel):
    """One result, as a client posts it."""

    id: str = Field(min_length=1, max_length=500)
    status: Literal["passed", "failed", "error"] = "passed"
    score: float | None = None
    output: Any = None
    tags: list[str] = Field(default_factory=list)
    duration_ms: float = Field(default=0.0, ge=0)


class Accepted(BaseModel):
    """The answer to ``POST /results``."""

    run_id: str
    id: str


def create_app(
    db: str | None = None,
    *,
    run_id: str | None = None,
    batch_size: int | None = None,
    flush_interval: float | None = None,
    data_dir: str | None = None,
) -> FastAPI:
    """The service; arguments left None come from the environment (see the module docs)."""
    given = {"db": db, "batch_size": batch_size, "flush_interval": flush_interval}
    given["data_dir"] = data_dir

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Arguments win; then ARCFLOW_* variables, arcflow.toml, this service's defaults.
        settings = arcflow.load_settings(
            {key: value for key, value in given.items() if value is not None},
            defaults={"flush_interval": 5.0},
        )
        async with arcflow.aio.open_runtime(
            db=settings.db,  # None: the PG* variables, then the embedded server
            run_id=run_id or os.environ.get("ARCFLOW_RUN_ID") or None,
            suite="fastapi-example",
            config=settings.runtime_config(),
        ) as runtime:
            app.state.runtime = runtime
            yield
        # leaving the block drained the runtime: every accepted result is written

    app = FastAPI(title="arcflow example", lifespan=lifespan)

    def runtime_of(request: Request) -> arcflow.AsyncioRuntime:
        runtime: arcflow.AsyncioRuntime = request.app.state.runtime
        return runtime

    @app.post("/results", response_model=Accepted)
    async def record_result(result: ResultIn, request: Request) -> Accepted:
        """Record one outcome; waits (backpressure) while the database is behind."""
        runtime = runtime_of(request)
        finished = datetime.now(UTC)
        outcome = arcflow.Outcome(
            run_id=runtime.run_id,
            scenario_id=result.id,
            attempt=1,
            status=arcflow.Status(result.status),
            started_at=finished - timedelta(milliseconds=result.duration_ms),
            finished_at=finished,
            score=result.score,
            output=result.output,
            executor={"kind": "fastapi-example"},
            tags=tuple(result.tags),
        )
        try:
            await runtime.record(outcome)
        except arcflow.RuntimeClosed as exc:  # the server is shutting down
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return Accepted(run_id=runtime.run_id, id=result.id)

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, Any]:
        """The runtime's counters (written rows, batches, queue depths, ...)."""
        snapshot = await runtime_of(request).statistics()
        return snapshot.as_dict()

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Ready once the runtime takes results."""
        runtime = runtime_of(request)
        return {"ok": runtime.running, "run_id": runtime.run_id}

    return app


app = create_app()
