-- Schema version 1. Timestamps are UTC ISO-8601 text ('2026-11-26T05:03:12.123Z').

CREATE TABLE sessions (
    id               INTEGER PRIMARY KEY,
    scope_key        TEXT NOT NULL,             -- kind:place:owner, e.g. 'channel:123:456'
    kind             TEXT NOT NULL CHECK (kind IN ('dm', 'channel', 'thread', 'console')),
    guild_id         INTEGER,                   -- NULL for DMs and the console
    channel_id       INTEGER,                   -- the DM, channel or thread; NULL for the console
    user_id          INTEGER,                   -- owner; NULL when the place shares one session
    created_at       TEXT NOT NULL,
    closed_at        TEXT,                      -- set by /reset: kept for feedback and export
    context_start_id INTEGER NOT NULL DEFAULT 0 -- first message still sent to the model
) STRICT;
CREATE UNIQUE INDEX sessions_open ON sessions (scope_key) WHERE closed_at IS NULL;
CREATE INDEX sessions_guild ON sessions (guild_id);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE system_prompts (
    id   INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
) STRICT;

CREATE TABLE messages (
    id                 INTEGER PRIMARY KEY,
    session_id         INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    status             TEXT NOT NULL
        CHECK (status IN ('pending', 'done', 'interrupted', 'failed', 'cancelled')),
    content            TEXT NOT NULL,
    tokens             INTEGER NOT NULL,
    created_at         TEXT NOT NULL,
    updated_at         TEXT,
    author_id          INTEGER,                 -- who wrote a user message
    author_name        TEXT,
    discord_message_id INTEGER UNIQUE,          -- a user message's Discord id: answered once
    reply_to           INTEGER REFERENCES messages (id) ON DELETE CASCADE,
    -- replies only: what produced them
    model              TEXT,
    system_prompt_id   INTEGER REFERENCES system_prompts (id),
    temperature        REAL,
    top_p              REAL,
    max_tokens         INTEGER,
    context_start_id   INTEGER,
    context_turns      INTEGER,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    cached_tokens      INTEGER,
    first_token_ms     INTEGER,
    latency_ms         INTEGER,
    finish_reason      TEXT,
    error              TEXT
) STRICT;
CREATE INDEX messages_session ON messages (session_id, id);
CREATE INDEX messages_reply_to ON messages (reply_to);
CREATE INDEX messages_author ON messages (author_id);
CREATE INDEX messages_pending ON messages (status) WHERE status = 'pending';
CREATE INDEX messages_replies_at ON messages (created_at) WHERE role = 'assistant';

-- A reply longer than one Discord message spans several; a reaction on any of them counts.
CREATE TABLE reply_parts (
    discord_message_id INTEGER PRIMARY KEY,
    message_id         INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    channel_id         INTEGER,
    part               INTEGER NOT NULL
) STRICT;
CREATE INDEX reply_parts_message ON reply_parts (message_id);

CREATE TABLE feedback (
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL,
    score      INTEGER NOT NULL CHECK (score IN (-1, 1)),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX feedback_user ON feedback (user_id);

-- Runtime settings changed from Discord. NULL means "inherit".
CREATE TABLE channel_settings (
    channel_id    INTEGER PRIMARY KEY,
    guild_id      INTEGER,
    system_prompt TEXT,
    temperature   REAL,
    max_tokens    INTEGER,
    shared        INTEGER CHECK (shared IN (0, 1)),
    auto_thread   INTEGER CHECK (auto_thread IN (0, 1)),
    reply_all     INTEGER CHECK (reply_all IN (0, 1)),
    updated_at    TEXT NOT NULL,
    updated_by    INTEGER
) STRICT;

CREATE TABLE user_settings (
    user_id       INTEGER PRIMARY KEY,
    system_prompt TEXT,
    temperature   REAL,
    max_tokens    INTEGER,
    updated_at    TEXT NOT NULL
) STRICT;

-- Threads the bot opened: it answers there without a mention.
CREATE TABLE bot_threads (
    thread_id  INTEGER PRIMARY KEY,
    guild_id   INTEGER,
    parent_id  INTEGER,
    user_id    INTEGER,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
