-- OpenID tokens (Client-Server API, "OpenID"; Server-Server API, "OpenID"): a user asks
-- for one and hands it to a third-party service, which exchanges it with us over
-- federation (/_matrix/federation/v1/openid/userinfo) for the user's id. They are not
-- access tokens: nothing else accepts them. Expired rows are deleted when new tokens
-- are issued.
CREATE TABLE openid_tokens (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_ts);
