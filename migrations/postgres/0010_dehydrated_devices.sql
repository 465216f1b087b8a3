-- Dehydrated devices (MSC3814; docs/architecture.md, "End-to-end encryption"): at most
-- one per user. The device itself is an ordinary row of `devices` with its keys in the
-- e2e tables, so other users' clients find it and send it room keys as to-device
-- messages; this table says which device it is and keeps its encrypted private part
-- (`device_data`, opaque to the server) for the user's next login to rehydrate.
CREATE TABLE dehydrated_devices (
    user_id     TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    -- The client's `device_data` object, as JSON text.
    device_data TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
