-- Send-to-device messages for other servers' users (Server-Server API "Send-to-device
-- messaging"; docs/architecture.md, "End-to-end encryption"). A /sendToDevice request
-- with recipients on another server writes one `m.direct_to_device` EDU per destination
-- here, in the same transaction as its local messages and at the same to-device
-- position. The federation sender sends the rows of the destinations it owns and
-- deletes them once the destination has taken the transaction, so an EDU survives a
-- restart of main or of the sender; the receiver drops a repeat by its `message_id`.
CREATE TABLE device_federation_outbox (
    destination TEXT NOT NULL,
    stream_id   BIGINT NOT NULL,
    -- The EDU's content (sender, type, message_id, messages), as JSON text.
    content     TEXT NOT NULL,
    PRIMARY KEY (destination, stream_id)
);

-- Our copy of other servers' users' device lists, for the users who share a room with
-- one of ours (Server-Server API "Device Management"; docs/architecture.md, "End-to-end
-- encryption"). `/keys/query` answers from it instead of asking the origin each time.
-- An `m.device_list_update` whose `prev_id` names `stream_id` is applied to it; one that
-- does not (an update was missed) drops the copy and fetches `/user/devices` again.
CREATE TABLE remote_device_lists (
    user_id     TEXT PRIMARY KEY,
    -- The origin's device-list position this copy is at; 0 when unknown (the copy came
    -- from a `/user/keys/query` answer, which has none).
    stream_id   BIGINT NOT NULL,
    -- {"devices": {device_id: signed keys}, "master_key": ..., "self_signing_key": ...}
    keys        TEXT NOT NULL,
    -- When the copy was fetched whole (ms): an old one is fetched again.
    fetched_ts  BIGINT NOT NULL
);
