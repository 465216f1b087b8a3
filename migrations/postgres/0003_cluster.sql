-- Elastic membership (ARCHITECTURE §7): each live process of a role holds a lease row it
-- renews; rows whose lease ran out are dead members. Times are the database's clock, so
-- processes on hosts with skewed clocks agree.
CREATE TABLE cluster_members (
    role TEXT NOT NULL,
    instance TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    joined_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (role, instance)
);

-- Durable per-key cursors of sharded work (a federation destination's last sent stream
-- position, a pusher's last pushed event): a key's new owner resumes where the last one
-- committed.
CREATE TABLE shard_cursors (
    role TEXT NOT NULL,
    shard_key TEXT NOT NULL,
    position BIGINT NOT NULL,
    owner TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (role, shard_key)
);
