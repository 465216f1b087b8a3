//! What the reader and the publisher share about talking to Redis: connection setup,
//! failures, back-off.

use std::{fmt, future::Future, time::Duration};

use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};

use crate::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};

/// Why a connection to Redis stopped being usable. Only ever logged.
#[derive(Debug)]
pub(crate) enum LinkError {
    Redis(redis::RedisError),
    TimedOut(&'static str),
    Reply(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Redis(e) => write!(f, "{e}"),
            LinkError::TimedOut(what) => write!(f, "{what} timed out"),
            LinkError::Reply(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

impl From<redis::RedisError> for LinkError {
    fn from(e: redis::RedisError) -> LinkError {
        LinkError::Redis(e)
    }
}

/// `fut`, failing with [`LinkError::TimedOut`] after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(LinkError::TimedOut(what)))
}

/// Opens a dedicated connection named `name`. `response_timeout` bounds each command on
/// it; `None` is for the blocking reader, whose reads are bounded by the caller instead.
pub(crate) async fn open(
    client: &redis::Client,
    name: &str,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, LinkError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout);
    within(CONNECT_TIMEOUT * 2, "connecting to Redis", async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    })
    .await
}

/// Capped exponential back-off between reconnection attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// The wait before the next attempt; each call doubles the one after, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    /// Redis answered: the next failure starts from the shortest wait again.
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
        assert_eq!(b.next_delay(), BACKOFF_MIN * 2);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
