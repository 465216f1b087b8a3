-- Transaction ids are scoped to the endpoint, so to the room too: the same client txn id
-- in two rooms names two events (spec: "Transaction identifiers").
ALTER TABLE event_txns ADD COLUMN room_id TEXT NOT NULL DEFAULT '';
UPDATE event_txns SET room_id = COALESCE(
    (SELECT e.room_id FROM events e WHERE e.event_id = event_txns.event_id), '');
ALTER TABLE event_txns DROP CONSTRAINT event_txns_pkey;
ALTER TABLE event_txns ADD PRIMARY KEY (user_id, device_id, room_id, txn_id);
