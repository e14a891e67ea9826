-- Users, credentials, conversations and usage. Applied by `ai-gateway migrate` and at start-up.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('user', 'admin')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_updated_at ON users (updated_at);

-- Tokens revoked before their expiry (logout, admin). Rows past expires_at may be purged.
CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_revoked_at ON revoked_tokens (revoked_at);

-- API keys are stored only as a SHA-256 hash; `prefix` is the visible part shown in lists.
CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    prefix     text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_revoked_at ON api_keys (revoked_at);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user ON conversations (user_id, updated_at DESC);

-- One row per turn. (request_id, role) makes a retried write harmless.
CREATE TABLE messages (
    id                bigserial PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    request_id        uuid NOT NULL,
    role              text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content           text NOT NULL,
    model             text,
    prompt_tokens     bigint,
    completion_tokens bigint,
    first_chunk_ms    bigint,
    duration_ms       bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, role)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

-- One row per chat request that reached a provider; id is chosen by the gateway, so a retried
-- write is harmless.
CREATE TABLE usage_records (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    api_key_id        uuid,
    session_id        text NOT NULL,
    request_id        text NOT NULL,
    model             text NOT NULL,
    provider          text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    first_chunk_ms    bigint,
    duration_ms       bigint NOT NULL,
    finish_reason     text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_user_time ON usage_records (user_id, created_at);
