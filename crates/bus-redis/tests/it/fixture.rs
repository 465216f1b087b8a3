//! Per-test fixture: a random key prefix on the test Redis, and buses on it.

use ganglion_bus::{Bus, testkit::BusFactory};
use ganglion_core::StreamKind;
use redis::aio::MultiplexedConnection;

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("GANGLION_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One test's corner of Redis.
pub struct Fixture {
    pub url: String,
    pub prefix: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            url: redis_url(),
            prefix: format!("ganglion-test-{:016x}", rand::random::<u64>()),
        }
    }

    /// A bus handle as process `writer` would hold it.
    pub async fn bus(&self, writer: &'static str) -> Bus {
        self.bus_at(&self.url, writer).await
    }

    /// A bus handle on this test's prefix through another URL (a proxy, a closed port).
    pub async fn bus_at(&self, url: &str, writer: &'static str) -> Bus {
        ganglion_bus_redis::connect(url, writer, &self.prefix)
            .await
            .expect("valid URL and prefix")
    }

    /// Every handle on this test's prefix, for the shared suite.
    pub fn factory(&self) -> impl BusFactory + '_ {
        move |writer| self.bus(writer)
    }

    /// A plain connection for inspecting and breaking things.
    pub async fn admin(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("valid test Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis answers")
    }

    /// This test's stream keys.
    pub fn keys(&self) -> Vec<String> {
        StreamKind::ALL
            .into_iter()
            .map(|k| ganglion_bus_redis::stream_key(&self.prefix, k))
            .collect()
    }

    /// Deletes this test's streams: `FLUSHALL`, confined to this test.
    pub async fn delete_streams(&self) {
        let mut admin = self.admin().await;
        redis::cmd("DEL")
            .arg(self.keys())
            .query_async::<()>(&mut admin)
            .await
            .expect("DEL");
    }

    /// Removes what the test left in Redis.
    pub async fn cleanup(self) {
        self.delete_streams().await;
    }
}
