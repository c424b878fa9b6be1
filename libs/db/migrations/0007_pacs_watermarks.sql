-- PACS watcher: per upstream PACS, the study date from which the next poll looks again.
CREATE TABLE pacs_watermarks (
    pacs         text        PRIMARY KEY,
    watermark    date        NOT NULL,
    last_poll_at timestamptz NOT NULL DEFAULT now(),
    last_error   text
);
