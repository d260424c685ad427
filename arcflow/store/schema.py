"""The ``arcflow`` schema in PostgreSQL and its migrations.

Migrations are a list of SQL scripts; ``arcflow.schema_version`` records the
highest one applied.  They run in one transaction under an advisory lock, so
two runtimes starting at once do not race.
"""

from __future__ import annotations

SCHEMA = "arcflow"

#: Columns of ``arcflow.outcomes`` that a batch writes, in COPY order.  ``tags`` is
#: last so that a batch without tags can leave it out (see :data:`UNTAGGED_COLUMNS`).
OUTCOME_COLUMNS = (
    "run_id",
    "scenario_id",
    "epoch",
    "attempt",
    "status",
    "final",
    "score",
    "output",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "duration_ms",
    "executor",
    "worker",
    "scenario_hash",
    "batch_id",
    "usage",
    "tags",
)

#: The COPY columns of a batch in which no outcome has tags: the column's default
#: (``'{}'``) fills it, and the client does not encode an empty array per row.
UNTAGGED_COLUMNS = OUTCOME_COLUMNS[:-1]

MIGRATIONS: list[str] = [
    # 1: runs, outcomes, dead letters, batches
    """
    CREATE TABLE arcflow.runs (
        run_id       text PRIMARY KEY,
        suite        text,
        suite_hash   text,
        executor     jsonb NOT NULL DEFAULT '{}',
        config       jsonb NOT NULL DEFAULT '{}',
        status       text NOT NULL DEFAULT 'running',
        started_at   timestamptz NOT NULL DEFAULT now(),
        finished_at  timestamptz,
        scenarios    integer,
        summary      jsonb
    );

    CREATE TABLE arcflow.outcomes (
        run_id         text NOT NULL,
        scenario_id    text NOT NULL,
        attempt        integer NOT NULL CHECK (attempt >= 1),
        status         text NOT NULL
                       CHECK (status IN ('passed', 'failed', 'error', 'timeout', 'cancelled')),
        final          boolean NOT NULL,
        score          double precision,
        output         jsonb,
        error_type     text,
        error_message  text,
        started_at     timestamptz NOT NULL,
        finished_at    timestamptz NOT NULL,
        duration_ms    double precision NOT NULL,
        executor       jsonb NOT NULL DEFAULT '{}',
        worker         text,
        scenario_hash  text,
        tags           text[] NOT NULL DEFAULT '{}',
        batch_id       text NOT NULL,
        recorded_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, scenario_id, attempt)
    );
    CREATE INDEX outcomes_run_recorded ON arcflow.outcomes (run_id, recorded_at);

    CREATE TABLE arcflow.batches (
        batch_id     text PRIMARY KEY,
        run_id       text NOT NULL,
        reason       text NOT NULL,
        size         integer NOT NULL,
        inserted     integer NOT NULL,
        source       text NOT NULL DEFAULT 'live',
        written_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX batches_run ON arcflow.batches (run_id, written_at);

    CREATE TABLE arcflow.dead_letters (
        id           bigserial PRIMARY KEY,
        run_id       text NOT NULL,
        scenario_id  text NOT NULL,
        attempt      integer NOT NULL,
        batch_id     text NOT NULL,
        payload      text NOT NULL,
        sqlstate     text,
        message      text NOT NULL,
        attempts     integer NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        UNIQUE (run_id, scenario_id, attempt)
    );
    """,
    # 2: who holds a run (one process at a time; see arcflow.runs.RunLock)
    """
    CREATE TABLE arcflow.run_owners (
        run_id        text PRIMARY KEY,
        host          text NOT NULL,
        pid           integer NOT NULL,
        token         text NOT NULL,
        acquired_at   timestamptz NOT NULL DEFAULT now(),
        heartbeat_at  timestamptz NOT NULL DEFAULT now(),
        released_at   timestamptz
    );
    """,
    # 3: tokens and cost: the reported usage, and its known counters as columns of their own
    """
    ALTER TABLE arcflow.outcomes ADD COLUMN usage jsonb;
    ALTER TABLE arcflow.outcomes
        ADD COLUMN input_tokens bigint
            GENERATED ALWAYS AS ((usage->>'input_tokens')::numeric::bigint) STORED,
        ADD COLUMN output_tokens bigint
            GENERATED ALWAYS AS ((usage->>'output_tokens')::numeric::bigint) STORED,
        ADD COLUMN cost_usd double precision
            GENERATED ALWAYS AS ((usage->>'cost_usd')::double precision) STORED;
    """,
    # 4: epochs: a scenario may run K times in one run; the key gains the epoch
    """
    ALTER TABLE arcflow.outcomes ADD COLUMN epoch integer NOT NULL DEFAULT 1 CHECK (epoch >= 1);
    ALTER TABLE arcflow.outcomes DROP CONSTRAINT outcomes_pkey,
        ADD CONSTRAINT outcomes_pkey PRIMARY KEY (run_id, scenario_id, epoch, attempt);
    ALTER TABLE arcflow.dead_letters ADD COLUMN epoch integer NOT NULL DEFAULT 1;
    ALTER TABLE arcflow.dead_letters
        DROP CONSTRAINT dead_letters_run_id_scenario_id_attempt_key,
        ADD CONSTRAINT dead_letters_key UNIQUE (run_id, scenario_id, epoch, attempt);
    """,
    # 5: shared runs: a run's scenarios as claims that workers take with leases
    """
    CREATE TABLE arcflow.claims (
        run_id        text NOT NULL,
        scenario_id   text NOT NULL,
        epoch         integer NOT NULL DEFAULT 1,
        line          bigint NOT NULL,
        scenario      jsonb NOT NULL,
        content_hash  text NOT NULL,
        state         text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'claimed', 'done')),
        worker_id     text,
        lease_until   timestamptz,
        claim_start   integer NOT NULL DEFAULT 1,
        claims        integer NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, scenario_id, epoch)
    );
    CREATE INDEX claims_open ON arcflow.claims (run_id, line) WHERE state <> 'done';
    CREATE TABLE arcflow.workers (
        run_id        text NOT NULL,
        worker_id     text NOT NULL,
        host          text NOT NULL,
        pid           integer NOT NULL,
        started_at    timestamptz NOT NULL DEFAULT now(),
        heartbeat_at  timestamptz NOT NULL DEFAULT now(),
        stopped_at    timestamptz,
        claimed       bigint NOT NULL DEFAULT 0,
        done          bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, worker_id)
    );
    """,
    # 6: the pending claims in line order, where a worker's steady claims start (see fleet)
    """
    CREATE INDEX claims_pending ON arcflow.claims (run_id, line) WHERE state = 'pending';
    """,
]

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS arcflow;
CREATE TABLE IF NOT EXISTS arcflow.schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""

#: Advisory lock key that serialises migrations (any constant bigint).
MIGRATION_LOCK = 0x41524346  # "ARCF"

LATEST_VERSION = len(MIGRATIONS)

STAGING_TABLE = "arcflow_staging"

#: Per-connection temp table the COPY goes into; emptied at each commit.
CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    run_id text, scenario_id text, epoch integer, attempt integer, status text, final boolean,
    score double precision, output jsonb, error_type text, error_message text,
    started_at timestamptz, finished_at timestamptz, duration_ms double precision,
    executor jsonb, worker text, scenario_hash text, batch_id text, usage jsonb,
    tags text[] DEFAULT '{{}}'
) ON COMMIT DELETE ROWS
"""

_cols = ", ".join(OUTCOME_COLUMNS)

#: Move the staged rows into outcomes, skipping stored keys, and log the batch:
#: one statement, returning how many rows were new.
MERGE_STAGED = f"""
WITH inserted AS (
    INSERT INTO arcflow.outcomes ({_cols})
    SELECT {_cols} FROM {STAGING_TABLE}
    ON CONFLICT (run_id, scenario_id, epoch, attempt) DO NOTHING
    RETURNING 1
), counted AS (
    SELECT count(*)::int AS n FROM inserted
), logged AS (
    INSERT INTO arcflow.batches (batch_id, run_id, reason, size, inserted, source)
    SELECT $1, $2, $3, $4, n, $5 FROM counted
    ON CONFLICT (batch_id) DO UPDATE SET inserted = arcflow.batches.inserted + EXCLUDED.inserted
)
SELECT n FROM counted
"""

#: Log a batch whose rows were COPY'd straight into outcomes (all of them new).
LOG_BATCH = """
INSERT INTO arcflow.batches (batch_id, run_id, reason, size, inserted, source)
VALUES ($1, $2, $3, $4, $4, $5)
ON CONFLICT (batch_id) DO UPDATE SET inserted = arcflow.batches.inserted + EXCLUDED.inserted
"""

#: The primary key a direct COPY runs into when a key of the batch is already stored.
OUTCOMES_PKEY = "outcomes_pkey"

#: Attempt numbers each claim of a scenario gets to itself: a re-claim starts this many
#: after the previous claim's first, so two workers never write the same key.
CLAIM_BLOCK = 1000

#: Before a shared run's merge: lock the claims of the staged final outcomes that this
#: worker holds (in key order, as the heartbeat does, so the two never deadlock).  Held to
#: the commit, no other worker can take them in between; one whose lease ran out and was
#: taken is not this worker's any more, and the merge below sees that.  $1 is the worker.
LOCK_FENCED_CLAIMS = f"""
SELECT 1 FROM arcflow.claims c
JOIN {STAGING_TABLE} s ON c.run_id = s.run_id AND c.scenario_id = s.scenario_id
    AND c.epoch = s.epoch
WHERE s.final AND c.worker_id = $1 AND c.state = 'claimed'
ORDER BY c.scenario_id, c.epoch
FOR UPDATE OF c
"""

#: In a shared run a final outcome counts only while its claim is held; and ``cancelled``
#: is never final there: it says the worker stopped, and the claim goes back to the run.
_FENCED_FINAL = "(final AND held AND status <> 'cancelled')"

#: The staging merge of a shared run: a final outcome counts (stays final, and marks its
#: claim done) only while the claim that ran it is still this worker's (the fence: the
#: claim's worker and its block of attempt numbers).  $6 is the worker id.
MERGE_STAGED_FENCED = f"""
WITH staged AS (
    SELECT s.*, EXISTS (
        SELECT 1 FROM arcflow.claims c
        WHERE c.run_id = s.run_id AND c.scenario_id = s.scenario_id AND c.epoch = s.epoch
          AND c.worker_id = $6 AND c.state = 'claimed'
          AND s.attempt >= c.claim_start AND s.attempt < c.claim_start + {CLAIM_BLOCK}
    ) AS held
    FROM {STAGING_TABLE} s
), inserted AS (
    INSERT INTO arcflow.outcomes ({_cols})
    SELECT {", ".join(_FENCED_FINAL if c == "final" else c for c in OUTCOME_COLUMNS)}
    FROM staged
    ON CONFLICT (run_id, scenario_id, epoch, attempt) DO NOTHING
    RETURNING scenario_id, epoch, final
), finished AS (
    UPDATE arcflow.claims c SET state = 'done', lease_until = NULL
    FROM inserted i
    WHERE i.final AND c.run_id = $2 AND c.scenario_id = i.scenario_id AND c.epoch = i.epoch
      AND c.worker_id = $6
    RETURNING 1
), counted AS (
    SELECT count(*)::int AS n FROM inserted
), worker AS (
    UPDATE arcflow.workers w SET done = w.done + (SELECT count(*) FROM finished)
    WHERE w.run_id = $2 AND w.worker_id = $6
), logged AS (
    INSERT INTO arcflow.batches (batch_id, run_id, reason, size, inserted, source)
    SELECT $1, $2, $3, $4, n, $5 FROM counted
    ON CONFLICT (batch_id) DO UPDATE SET inserted = arcflow.batches.inserted + EXCLUDED.inserted
)
SELECT n FROM counted
"""

#: A shared run's poison outcome, dead-lettered as final, ends its claim if the claim is
#: still the worker's: $1 run, $2 scenario, $3 epoch, $4 attempt, $5 worker.
FINISH_CLAIM = f"""
WITH finished AS (
    UPDATE arcflow.claims SET state = 'done', lease_until = NULL
    WHERE run_id = $1 AND scenario_id = $2 AND epoch = $3 AND worker_id = $5
      AND state = 'claimed' AND $4 >= claim_start AND $4 < claim_start + {CLAIM_BLOCK}
    RETURNING 1
)
UPDATE arcflow.workers SET done = done + (SELECT count(*) FROM finished)
WHERE run_id = $1 AND worker_id = $5
"""
