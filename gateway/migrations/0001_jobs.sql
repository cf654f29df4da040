-- Job state of the gateway, fed by t2v.events.v1. One row per job; every column a client sees
-- is derived from the job's events, applied in partition order exactly once (event_offsets).

CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    tenant          text NOT NULL,
    -- Insertion order: the list endpoint pages by it (newest first).
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- SHA-256 of the submitted request's canonical JSON: same Idempotency-Key + same body = same job.
    request_digest  text NOT NULL,
    -- The request as submitted, in its protobuf JSON form (the settings asked for).
    request         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'completed', 'failed', 'canceled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The UTC day whose quota this job was counted against; NULL once charged back.
    charged_day     date,
    -- Bumped by every applied event: the SSE stream sends when it changes.
    version         bigint NOT NULL DEFAULT 0,
    step            integer,
    total_steps     integer,
    eta_ms          bigint,
    -- The latest Started and the terminal event, in their protobuf JSON form.
    started         jsonb,
    terminal        jsonb
);

CREATE INDEX jobs_by_tenant ON jobs (tenant, seq DESC);
CREATE INDEX jobs_by_tenant_state ON jobs (tenant, state, seq DESC);

-- The events reader's position: the next offset to apply per partition, written in the same
-- transaction as the rows an event changes.
CREATE TABLE event_offsets (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Per-tenant token buckets, shared by every gateway replica.
CREATE TABLE rate_buckets (
    tenant       text PRIMARY KEY,
    tokens       double precision NOT NULL,
    refreshed_at timestamptz NOT NULL
);

-- What each tenant spent per UTC day.
CREATE TABLE daily_usage (
    tenant  text NOT NULL,
    day     date NOT NULL,
    videos  bigint NOT NULL DEFAULT 0,
    gpu_ms  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
