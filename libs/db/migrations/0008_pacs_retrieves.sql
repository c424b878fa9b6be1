-- PACS watcher, on demand: the PACS each watcher serves, and retrieves asked through the API.

-- Written by the PACS watcher at start (and refreshed every poll): the names a retrieve may
-- name. The API validates against it, so the deployment's PACS are configured in one place
-- (WATCHER_PACS). A PACS removed from the configuration keeps its row; `seen_at` tells.
CREATE TABLE pacs_peers (
    name        text        PRIMARY KEY,
    ae_title    text        NOT NULL,
    retrieve    text        NOT NULL CHECK (retrieve IN ('move', 'get')),
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- An on-demand retrieve: an import task of kind 'retrieve' (same lease, status and ledger
-- counters as imports) plus the request and the retry state.
CREATE TABLE pacs_retrieves (
    task_id          uuid        PRIMARY KEY REFERENCES import_tasks (id),
    pacs             text        NOT NULL,
    request          jsonb       NOT NULL,
    method           text        CHECK (method IN ('move', 'get')),  -- set when it runs
    found            boolean     NOT NULL DEFAULT false,  -- C-FIND done, studies listed
    attempts         integer     NOT NULL DEFAULT 0,      -- failed attempts (PACS away)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text
);
CREATE INDEX pacs_retrieves_due ON pacs_retrieves (pacs, next_attempt_at);

-- The studies a retrieve matched, with the sub-operation counts the PACS reported.
CREATE TABLE pacs_retrieve_studies (
    task_id     uuid        NOT NULL REFERENCES pacs_retrieves (task_id),
    study_uid   text        NOT NULL,
    expected    integer,    -- NumberOfStudyRelatedInstances from the C-FIND (NULL: not said)
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'skipped', 'retrieving', 'done')),
    completed   integer     NOT NULL DEFAULT 0,
    failed      integer     NOT NULL DEFAULT 0,
    warning     integer     NOT NULL DEFAULT 0,
    remaining   integer,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, study_uid)
);
