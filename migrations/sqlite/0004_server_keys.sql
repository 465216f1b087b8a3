-- Remote servers' signing keys (Server-Server API, "Retrieving server keys"), as fetched
-- and verified: a key may be used to check signatures made up to valid_until_ts (for an
-- expired key, only signatures made before it expired).
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
