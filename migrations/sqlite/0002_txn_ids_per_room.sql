-- Transaction ids are scoped to the endpoint, so to the room too: the same client txn id
-- in two rooms names two events (spec: "Transaction identifiers"). SQLite cannot change a
-- primary key in place, so the table is rebuilt.
CREATE TABLE event_txns_new (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_ts  BIGINT NOT NULL,
    room_id     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, device_id, room_id, txn_id)
);
INSERT INTO event_txns_new (user_id, device_id, txn_id, event_id, created_ts, room_id)
SELECT t.user_id, t.device_id, t.txn_id, t.event_id, t.created_ts,
       COALESCE((SELECT e.room_id FROM events e WHERE e.event_id = t.event_id), '')
FROM event_txns t;
DROP TABLE event_txns;
ALTER TABLE event_txns_new RENAME TO event_txns;
