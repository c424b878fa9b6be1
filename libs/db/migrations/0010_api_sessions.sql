-- Browser sessions: a person signs in once with an API key and the browser keeps an
-- HttpOnly cookie holding a random token. Only the token's SHA-256 is stored (like api_keys);
-- a session dies with its expiry, at sign-out, or when its key is revoked.
CREATE TABLE api_sessions (
    id            bigserial   PRIMARY KEY,
    token_hash    text        NOT NULL UNIQUE,
    api_key_id    bigint      NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX api_sessions_expires ON api_sessions (expires_at);
