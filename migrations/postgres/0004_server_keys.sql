-- Remote servers' signing keys (Server-Server API, "Retrieving server keys"), as fetched
-- and verified: a key may be used to check signatures made up to valid_until_ts (for an
-- expired key, only signatures made before it expired).
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    -- The whole signed key document the key came from: served again, with our signature
    -- added, when we act as a notary (/_matrix/key/v2/query).
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
