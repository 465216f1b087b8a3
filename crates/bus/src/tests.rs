//! The shared suite against the in-process bus.

use crate::{Bus, IN_PROCESS_CAPACITY, testkit};

/// A factory whose handles are clones of one in-process bus, as every part of the
/// all-in-one process holds it.
fn shared() -> impl testkit::BusFactory {
    let bus = Bus::in_process("main");
    move |_writer: &'static str| std::future::ready(bus.clone())
}

#[tokio::test]
async fn delivers_in_order() {
    testkit::delivers_in_order(&shared()).await;
}

#[tokio::test]
async fn every_subscriber_gets_every_entry() {
    testkit::every_subscriber_gets_every_entry(&shared()).await;
}

#[tokio::test]
async fn publish_before_subscribe_is_not_delivered() {
    testkit::publish_before_subscribe_is_not_delivered(&shared()).await;
}

#[tokio::test]
async fn heartbeats_are_delivered() {
    testkit::heartbeats_are_delivered(&shared()).await;
}

#[tokio::test]
async fn burst_of_ten_thousand_arrives_in_order() {
    const { assert!(10_000 < IN_PROCESS_CAPACITY) };
    testkit::burst_arrives_in_order(&shared(), 10_000).await;
}

#[tokio::test]
async fn overflow_reports_gap() {
    testkit::overflow_reports_gap(&shared(), IN_PROCESS_CAPACITY).await;
}

#[tokio::test]
async fn closed_after_last_handle_dropped() {
    testkit::closed_after_last_handle_dropped(Bus::in_process("main")).await;
}

#[tokio::test]
async fn fills_in_the_writer_name() {
    let bus = Bus::in_process("main");
    assert_eq!(bus.writer(), "main");
    let mut sub = bus.subscribe();
    bus.publish(testkit::entry(ganglion_core::StreamKind::Events, 0, 1));
    assert_eq!(testkit::next_entry(&mut sub).await.writer, "main");
}
