-- Signed webhooks. A job's webhook URL (its own or its tenant's default, checked at submit), and
-- one delivery row per terminal event, written in the transaction that applies the event: a
-- delivery exists if and only if the event was applied, once, whatever the number of replicas.

ALTER TABLE jobs ADD COLUMN webhook_url text;

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    -- The webhook-id header: the same on every attempt, so receivers can drop duplicates.
    event_id        text NOT NULL UNIQUE,
    tenant          text NOT NULL,
    url             text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; while an attempt runs, the end of the claiming replica's lease.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    -- One entry per attempt: {attempt, atUnixMs, status, error}.
    log             jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    given_up_at     timestamptz
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id);
