-- End-to-end encryption (Client-Server API "End-to-End Encryption", "Send-to-Device
-- messaging"; Server-Server API "Device Management"). Every key is kept as the JSON text
-- the client uploaded (signed objects must never be re-serialised differently).

-- A device's identity keys (`device_keys` of /keys/upload), one row per device.
CREATE TABLE e2e_device_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each is handed out once by /keys/claim and deleted in the same statement.
CREATE TABLE e2e_one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- Fallback keys: one per device and algorithm, handed out when no one-time key is left
-- (and then marked used, but kept until the device uploads a new one).
CREATE TABLE e2e_fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys (`master`, `self_signing`, `user_signing`), local and cached remote.
CREATE TABLE e2e_cross_signing_keys (
    user_id    TEXT NOT NULL,
    key_type   TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload, kept apart from the signed objects so
-- that who may see them can be decided per reader: a signature by another user's
-- user-signing key is shown only to that user.
CREATE TABLE e2e_signatures (
    target_user    TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user    TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key_id, signer_user, signer_key_id)
);

-- The device-list stream: a row for each user whose devices or cross-signing keys
-- changed at a position. /sync's `device_lists.changed` and /keys/changes read it.
CREATE TABLE device_list_changes (
    stream_id  BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    PRIMARY KEY (stream_id, user_id)
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id);

-- Send-to-device: one /sendToDevice writes all its messages at one position, so the key
-- becomes (device, position). Rows are carried over.
CREATE TABLE to_device_new (
    stream_id   BIGINT NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    sender      TEXT NOT NULL,
    type        TEXT NOT NULL,
    content     TEXT NOT NULL,
    message_id  TEXT,
    PRIMARY KEY (user_id, device_id, stream_id)
);
INSERT INTO to_device_new (stream_id, user_id, device_id, sender, type, content, message_id)
    SELECT stream_id, user_id, device_id, sender, type, content, message_id FROM to_device;
DROP TABLE to_device;
ALTER TABLE to_device_new RENAME TO to_device;
CREATE INDEX to_device_stream ON to_device (stream_id);

-- Transaction ids of /sendToDevice, per device, so a retried request is not sent twice.
CREATE TABLE to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    stream_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
