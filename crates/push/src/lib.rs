//! push: push notifications (spec: Client-Server API, "Push Notifications";
//! docs/push.md). So far: each user's push rules (`rules`: the defaults plus their own,
//! and the cache the evaluator reads them through) and the evaluation of an event
//! against the rules of every local member of its room (`evaluate`).
//!
//! Depends on `core` and `storage`, nothing else of ours: `rooms` calls the evaluator
//! before persisting an event, `client-api` serves `/pushrules` and `/notifications`,
//! `sync` reads the counts. Holds no SQL and serves no HTTP.

pub mod evaluate;
pub mod rules;

pub use evaluate::Evaluator;
pub use rules::RulesetCache;
