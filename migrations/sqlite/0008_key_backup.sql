-- Server-side key backups (Client-Server API "Server-side key backups"). Versions are
-- per user, increasing integers; a deleted version keeps its row (`deleted` = 1) so its
-- number is never handed out again, as Synapse does (storage/databases/main/e2e_room_keys.py).

-- One row per backup version: the client's `algorithm` and `auth_data` (kept as the JSON
-- text the client sent: it is signed), and `etag`, a counter raised whenever the
-- version's keys change.
CREATE TABLE e2e_room_keys_versions (
    user_id    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    algorithm  TEXT NOT NULL,
    auth_data  TEXT NOT NULL,
    etag       BIGINT NOT NULL DEFAULT 0,
    deleted    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

-- The backed-up keys: one per (version, room, session). The three metadata fields the
-- better-key rule compares are columns; `session_data` is the client's opaque JSON.
CREATE TABLE e2e_room_keys (
    user_id              TEXT NOT NULL,
    version              BIGINT NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  BIGINT NOT NULL,
    forwarded_count      BIGINT NOT NULL,
    is_verified          BIGINT NOT NULL,
    session_data         TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
