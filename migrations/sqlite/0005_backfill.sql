-- Backfill (Server-Server API, "Backfilling and retrieving missing events"): in a room
-- we joined through another server, the events referenced as prev_events that we do
-- not have yet. Back-pagination past our earliest event asks a server in the room for
-- the history before these; a room with no rows here has all of its history.
CREATE TABLE backfill_frontier (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Outliers: events we hold without their place in the room's history (the state and
-- auth chain a send_join returned). They count for state and auth but stay out of the
-- timeline until backfill reaches them and gives them a position in the history.
ALTER TABLE events ADD COLUMN outlier INTEGER NOT NULL DEFAULT 0;

-- The room's state group after an event, where it differs from the event's own: an
-- event on a fork has the state of its branch (state_group), while the room's state
-- after it is the resolution of every branch (room_group). Reads of the room's state
-- at a position use room_group, falling back to state_group.
ALTER TABLE events ADD COLUMN room_group BIGINT;
