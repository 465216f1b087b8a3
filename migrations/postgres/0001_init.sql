-- Ganglion schema, version 1. Portable types only (BIGINT, TEXT) so that one SQL text
-- serves PostgreSQL and SQLite; see docs/decisions/0001-storage-any-driver.md.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    is_admin       BIGINT NOT NULL DEFAULT 0,
    is_guest       BIGINT NOT NULL DEFAULT 0,
    deactivated    BIGINT NOT NULL DEFAULT 0,
    displayname    TEXT,
    avatar_url     TEXT,
    created_ts     BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    last_seen_ts  BIGINT,
    last_seen_ip  TEXT,
    created_ts    BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token          TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    expires_ts     BIGINT,
    refresh_token  TEXT,
    created_ts     BIGINT NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token       TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  BIGINT,
    pending       BIGINT NOT NULL DEFAULT 0,
    completed     BIGINT NOT NULL DEFAULT 0,
    expiry_time   BIGINT
);

CREATE TABLE uia_sessions (
    session_id  TEXT PRIMARY KEY,
    user_id     TEXT,
    completed   TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);

CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    creator       TEXT NOT NULL,
    is_public     BIGINT NOT NULL DEFAULT 0,
    state_group   BIGINT,
    created_ts    BIGINT NOT NULL
);

-- The events stream: stream_ordering is allocated by main's persister in commit order.
CREATE TABLE events (
    stream_ordering   BIGINT PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    room_id           TEXT NOT NULL,
    sender            TEXT NOT NULL,
    type              TEXT NOT NULL,
    state_key         TEXT,
    depth             BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL,
    json              TEXT NOT NULL,
    state_group       BIGINT,
    unsigned          TEXT,
    redacted_by       TEXT,
    txn_id            TEXT,
    txn_device        TEXT
);
CREATE INDEX events_room ON events (room_id, stream_ordering);
CREATE INDEX events_state_key ON events (state_key, type, stream_ordering);

CREATE TABLE event_txns (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_ts  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE current_state (
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    membership       TEXT,
    stream_ordering  BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_member ON current_state (state_key, type);

-- Room state, compactly: a snapshot row (base_id NULL) holds the whole state; a delta row
-- holds every change since its base snapshot, so reading any group costs two rows.
CREATE TABLE state_groups (
    id       BIGINT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    base_id  BIGINT,
    entries  TEXT NOT NULL
);

CREATE TABLE room_aliases (
    alias       TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    creator     TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE receipts (
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    receipt_type  TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    ts            BIGINT NOT NULL,
    stream_id     BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);

CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    stream_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

CREATE TABLE filters (
    user_id    TEXT NOT NULL,
    filter_id  BIGINT NOT NULL,
    json       TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE to_device (
    stream_id   BIGINT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    sender      TEXT NOT NULL,
    type        TEXT NOT NULL,
    content     TEXT NOT NULL,
    message_id  TEXT
);
CREATE INDEX to_device_target ON to_device (user_id, device_id, stream_id);
