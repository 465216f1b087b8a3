-- What the push rules said of each event for each local user it notifies (Client-Server
-- API "Push Notifications"; docs/push.md). Written in the event's own transaction by the
-- persister, so an event and its notifications commit together. Unread counts in /sync
-- count the rows after the user's read receipt; /notifications lists them.
CREATE TABLE event_push_actions (
    user_id          TEXT NOT NULL,
    room_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    -- `main`, or the event id of the thread's root for an event in a thread.
    thread_id        TEXT NOT NULL,
    -- 1 when the actions highlight.
    highlight        BIGINT NOT NULL,
    -- The actions of the rule that matched, as JSON text.
    actions          TEXT NOT NULL,
    ts               BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
);
CREATE INDEX event_push_actions_user ON event_push_actions (user_id, stream_ordering);
