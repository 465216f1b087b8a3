//! What the bus puts in Redis, and what it does with what it finds there.

use ganglion_bus::{
    Delivery, Entry,
    testkit::{entry, full_row, next, next_entry},
};
use ganglion_bus_redis::{ENTRY_FIELD, Error, connect, stream_key};
use ganglion_core::StreamKind;
use prost::Message;
use redis::streams::StreamRangeReply;

use crate::fixture::{Fixture, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_prost_in_one_field_of_their_kinds_stream() {
    let fx = Fixture::new();
    let bus = fx.bus("main").await;
    let mut e = entry(StreamKind::Receipts, 6, 7);
    e.rows = vec![full_row(1)];
    bus.publish(e.clone());
    bus.flush().await;
    let mut admin = fx.admin().await;
    let key = stream_key(&fx.prefix, StreamKind::Receipts);
    assert_eq!(key, format!("{}:stream:receipts", fx.prefix));
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut admin)
        .await
        .expect("XRANGE");
    assert_eq!(range.ids.len(), 1);
    let stored = &range.ids[0];
    assert_eq!(stored.map.len(), 1, "one field per entry");
    let raw: Vec<u8> = redis::from_redis_value(stored.map[ENTRY_FIELD].clone()).expect("bytes");
    e.writer = "main".to_owned();
    assert_eq!(Entry::decode(raw.as_slice()).expect("prost Entry"), e);
    let others: i64 = redis::cmd("EXISTS")
        .arg(stream_key(&fx.prefix, StreamKind::Events))
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert_eq!(others, 0, "nothing was written to other streams");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entries_report_gap() {
    let fx = Fixture::new();
    let bus = fx.bus("main").await;
    let mut sub = bus.subscribe();
    let mut admin = fx.admin().await;
    let key = stream_key(&fx.prefix, StreamKind::Typing);
    // A truncated varint, then an entry without the field.
    for (field, value) in [(ENTRY_FIELD, &b"\xff\xff\xff"[..]), ("other", &b"x"[..])] {
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async::<String>(&mut admin)
            .await
            .expect("XADD");
        assert!(matches!(next(&mut sub).await, Delivery::Gap));
    }
    let good = entry(StreamKind::Typing, 1, 2);
    bus.publish(good.clone());
    assert_eq!(next_entry(&mut sub).await.pos, good.pos);
    fx.cleanup().await;
}

#[tokio::test]
async fn connect_refuses_bad_configuration() {
    assert!(matches!(
        connect("not a url", "main", "p").await,
        Err(Error::InvalidUrl(_))
    ));
    assert!(matches!(
        connect(&redis_url(), "main", "").await,
        Err(Error::EmptyKeyPrefix)
    ));
}
