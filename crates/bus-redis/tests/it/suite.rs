//! The shared bus suite (`ganglion_bus::testkit`) against Redis.

use ganglion_bus::testkit;
use ganglion_bus_redis::{PUBLISH_QUEUE, SUBSCRIBER_CAPACITY};

use crate::fixture::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order() {
    let fx = Fixture::new();
    testkit::delivers_in_order(&fx.factory()).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_entry() {
    let fx = Fixture::new();
    testkit::every_subscriber_gets_every_entry(&fx.factory()).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_before_subscribe_is_not_delivered() {
    let fx = Fixture::new();
    testkit::publish_before_subscribe_is_not_delivered(&fx.factory()).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_delivered() {
    let fx = Fixture::new();
    testkit::heartbeats_are_delivered(&fx.factory()).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_ten_thousand_arrives_in_order() {
    const { assert!(10_000 < PUBLISH_QUEUE && 10_000 < SUBSCRIBER_CAPACITY) };
    let fx = Fixture::new();
    testkit::burst_arrives_in_order(&fx.factory(), 10_000).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_reports_gap() {
    const { assert!(SUBSCRIBER_CAPACITY + 100 < PUBLISH_QUEUE) };
    let fx = Fixture::new();
    testkit::overflow_reports_gap(&fx.factory(), SUBSCRIBER_CAPACITY).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_after_last_handle_dropped() {
    let fx = Fixture::new();
    testkit::closed_after_last_handle_dropped(fx.bus("main").await).await;
    fx.cleanup().await;
}
