//! The behavioural suite every [`Bus`] implementation passes (one suite, a
//! generic async fn per case, run against every backend).
//!
//! Each case takes a [`BusFactory`]: every handle it makes is on the same bus, as the
//! processes of one deployment would hold it (for the in-process bus, clones of one
//! handle). Cases panic on failure and wait on conditions with [`DEADLINE`], never sleep.
//! Compiled for this crate's tests and with the `testkit` feature.

use std::{future::Future, sync::Arc, time::Duration};

use ganglion_core::StreamKind;

use crate::{Bus, Delivery, Entry, Row, Subscription};

/// How long a case waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Makes handles on the bus under test.
pub trait BusFactory: Sync {
    /// A handle as the process named `writer` would hold it. Every handle one factory
    /// makes is on the same bus.
    fn bus(&self, writer: &'static str) -> impl Future<Output = Bus> + Send;
}

impl<F, Fut> BusFactory for F
where
    F: Fn(&'static str) -> Fut + Sync,
    Fut: Future<Output = Bus> + Send,
{
    fn bus(&self, writer: &'static str) -> impl Future<Output = Bus> + Send {
        self(writer)
    }
}

/// An entry on `stream` moving from `prev` to `pos`, with no rows and no writer.
pub fn entry(stream: StreamKind, prev: i64, pos: i64) -> Entry {
    Entry {
        writer: String::new(),
        stream: stream as i32,
        prev,
        pos,
        rows: Vec::new(),
    }
}

/// A row with every field set, so a transport that loses one is caught.
pub fn full_row(n: i64) -> Row {
    Row {
        room_id: format!("!room{n}:example.org"),
        event_id: format!("$event{n}"),
        user_id: format!("@user{n}:example.org"),
        kind: "m.room.member".to_owned(),
        state_key: Some(format!("@user{n}:example.org")),
        user_ids: vec!["@a:example.org".to_owned(), "@b:example.org".to_owned()],
        device_id: format!("DEVICE{n}"),
        server: format!("server{n}.example.org"),
    }
}

/// The next delivery, or a panic after [`DEADLINE`].
pub async fn next(sub: &mut Subscription) -> Delivery {
    match tokio::time::timeout(DEADLINE, sub.recv()).await {
        Ok(d) => d,
        Err(_) => panic!("no delivery within {DEADLINE:?}"),
    }
}

/// The next delivery, which must be an entry.
pub async fn next_entry(sub: &mut Subscription) -> Arc<Entry> {
    match next(sub).await {
        Delivery::Entry(e) => e,
        other => panic!("expected an entry, got {other:?}"),
    }
}

/// Waits until `sub` is told of a gap, skipping entries.
pub async fn until_gap(sub: &mut Subscription) {
    loop {
        match next(sub).await {
            Delivery::Gap => return,
            Delivery::Entry(_) => {}
            Delivery::Closed => panic!("bus closed while waiting for a gap"),
        }
    }
}

/// Waits until `sub` receives an entry equal to `want`, skipping gaps and other entries.
pub async fn until_entry(sub: &mut Subscription, want: &Entry) {
    loop {
        match next(sub).await {
            Delivery::Entry(e) if *e == *want => return,
            Delivery::Entry(_) | Delivery::Gap => {}
            Delivery::Closed => panic!("bus closed while waiting for {want:?}"),
        }
    }
}

fn with_writer(mut e: Entry, writer: &str) -> Entry {
    if e.writer.is_empty() {
        e.writer = writer.to_owned();
    }
    e
}

/// Entries arrive whole and in publish order on each stream, with the publisher's writer
/// name filled in where the entry left it empty.
pub async fn delivers_in_order(f: &impl BusFactory) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut sub = reader.subscribe();
    let mut want = Vec::new();
    for pos in 1..=60 {
        let kind = if pos % 2 == 0 {
            StreamKind::Events
        } else {
            StreamKind::Receipts
        };
        let mut e = entry(kind, pos - 1, pos);
        e.rows = (0..pos % 3).map(|i| full_row(pos * 10 + i)).collect();
        if pos == 7 {
            e.writer = "someone-else".to_owned();
        }
        want.push(with_writer(e.clone(), publisher.writer()));
        publisher.publish(e);
    }
    publisher.flush().await;
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.push((*next_entry(&mut sub).await).clone());
    }
    for kind in [StreamKind::Events, StreamKind::Receipts] {
        let of = |v: &[Entry]| -> Vec<Entry> {
            v.iter()
                .filter(|e| e.stream == kind as i32)
                .cloned()
                .collect()
        };
        assert_eq!(of(&got), of(&want), "stream {}", kind.name());
    }
}

/// Every subscriber, in every process, receives every entry.
pub async fn every_subscriber_gets_every_entry(f: &impl BusFactory) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut subs = vec![
        publisher.subscribe(),
        reader.subscribe(),
        reader.subscribe(),
    ];
    let want: Vec<Entry> = (1..=20)
        .map(|pos| {
            with_writer(
                entry(StreamKind::ToDevice, pos - 1, pos),
                publisher.writer(),
            )
        })
        .collect();
    for e in &want {
        publisher.publish(e.clone());
    }
    for sub in &mut subs {
        for e in &want {
            assert_eq!(*next_entry(sub).await, *e);
        }
    }
}

/// A subscription starts at subscribe time: what this process already received is not
/// replayed to it.
pub async fn publish_before_subscribe_is_not_delivered(f: &impl BusFactory) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut early = reader.subscribe();
    let before = with_writer(entry(StreamKind::AccountData, 0, 1), publisher.writer());
    publisher.publish(before.clone());
    // Once `early` has it, the reader's process has received it.
    assert_eq!(*next_entry(&mut early).await, before);
    let mut late = reader.subscribe();
    let after = with_writer(entry(StreamKind::AccountData, 1, 2), publisher.writer());
    publisher.publish(after.clone());
    assert_eq!(*next_entry(&mut late).await, after);
    assert_eq!(*next_entry(&mut early).await, after);
}

/// Heartbeats (`prev == pos`, no rows) on every stream are delivered as they are.
pub async fn heartbeats_are_delivered(f: &impl BusFactory) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut sub = reader.subscribe();
    let mut want: Vec<Entry> = StreamKind::ALL
        .into_iter()
        .map(|kind| with_writer(entry(kind, 41, 41), publisher.writer()))
        .collect();
    for e in &want {
        publisher.publish(e.clone());
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.push((*next_entry(&mut sub).await).clone());
    }
    // Order across streams is not promised; compare as sets.
    got.sort_by_key(|e| e.stream);
    want.sort_by_key(|e| e.stream);
    assert_eq!(got, want);
}

/// A burst of `n` entries published as fast as possible arrives whole and in order, with
/// no gap, at a subscriber that keeps reading. Pick `n` within the implementation's
/// buffers; [`overflow_reports_gap`] covers what happens past them.
pub async fn burst_arrives_in_order(f: &impl BusFactory, n: i64) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut sub = reader.subscribe();
    let mut want = 1;
    let reading = async {
        while want <= n {
            match next(&mut sub).await {
                Delivery::Entry(e) => {
                    assert_eq!((e.prev, e.pos), (want - 1, want), "out of order");
                    want += 1;
                }
                other => panic!("burst: expected entry {want}, got {other:?}"),
            }
        }
    };
    let publishing = async {
        for pos in 1..=n {
            publisher.publish(entry(StreamKind::Events, pos - 1, pos));
        }
        publisher.flush().await;
    };
    tokio::join!(reading, publishing);
}

/// A subscriber that stops reading while more than `capacity` entries arrive is told
/// [`Delivery::Gap`], then receives the newest entries in order.
pub async fn overflow_reports_gap(f: &impl BusFactory, capacity: usize) {
    let publisher = f.bus("writer-a").await;
    let reader = f.bus("reader").await;
    let mut idle = reader.subscribe();
    let mut busy = reader.subscribe();
    let last = i64::try_from(capacity).expect("capacity fits in i64") + 100;
    for pos in 1..=last {
        publisher.publish(entry(StreamKind::Events, pos - 1, pos));
    }
    // Once `busy` has the last entry, the reader's process has fanned out everything.
    let tail = with_writer(
        entry(StreamKind::Events, last - 1, last),
        publisher.writer(),
    );
    until_entry(&mut busy, &tail).await;
    assert!(
        matches!(next(&mut idle).await, Delivery::Gap),
        "an overflowed subscriber must be told of the gap"
    );
    let mut prev = 0;
    loop {
        let e = next_entry(&mut idle).await;
        assert!(e.pos > prev, "out of order after the gap");
        prev = e.pos;
        if e.pos == last {
            break;
        }
    }
}

/// Once the last handle of `bus` is dropped, its subscribers see [`Delivery::Closed`].
/// Takes a handle no one else holds.
pub async fn closed_after_last_handle_dropped(bus: Bus) {
    let mut sub = bus.subscribe();
    drop(bus);
    loop {
        match next(&mut sub).await {
            Delivery::Closed => return,
            Delivery::Gap | Delivery::Entry(_) => {}
        }
    }
}
