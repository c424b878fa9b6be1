-- Routing: one row per (destination, instance) the router must forward by C-STORE.
-- The row is the destination's durable queue and its record of what was sent: it is
-- inserted (ON CONFLICT DO NOTHING) before the dicom.stored.v1 offset is committed, and
-- marked 'sent' right after the destination answered the C-STORE with success, so an
-- instance is never queued twice nor sent again once recorded. 'sending' marks the rows of
-- an association under way: found at the start of a round (the previous sender died between
-- the C-STORE and its record), they are "in doubt" and resolved by a C-FIND where the
-- destination answers one, else sent again (docs/adr/0020-routing.md).
CREATE TABLE route_queue (
    destination          text        NOT NULL,
    sop_instance_uid     text        NOT NULL,
    study_uid            text        NOT NULL,
    series_uid           text        NOT NULL,
    sop_class_uid        text        NOT NULL,
    transfer_syntax_uid  text        NOT NULL,
    storage_url          text        NOT NULL,
    rule                 text        NOT NULL,
    correlation_id       text        NOT NULL,
    state                text        NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts             integer     NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,
    enqueued_at          timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, sop_instance_uid)
);
-- The sender's next batch: due rows of one destination, oldest first.
CREATE INDEX route_queue_due ON route_queue (destination, next_attempt_at, enqueued_at)
    WHERE state = 'queued';
CREATE INDEX route_queue_sending ON route_queue (destination) WHERE state = 'sending';
CREATE INDEX route_queue_failed ON route_queue (destination, updated_at) WHERE state = 'failed';
