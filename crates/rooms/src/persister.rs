//! Main's event persister: the single writer of the events stream (docs/architecture.md, "Events").
//!
//! Callers hand over one prepared event each and await its position. The persister task
//! takes whatever is queued (up to [`MAX_BATCH`]) and writes it in one transaction, so
//! the commit rate is not the per-event fsync rate. Callers hold their room's lock while
//! they wait, so events of one room are persisted in order and never share a batch out
//! of order. Positions are allocated here, in commit order; after each commit the
//! persister announces the new position on the bus.
//!
//! Push rules are evaluated here, once per event whatever its origin (local sends,
//! events from other servers): in [`Persister::persist`], in the caller's task before
//! the event is queued, so rooms are evaluated in parallel and the event's
//! notifications are written in its own transaction (docs/push.md).

use ganglion_bus::{Bus, Entry, Row};
use ganglion_core::{Error, StreamKind, StreamPos};
use ganglion_push::Evaluator;
use ganglion_storage::{
    Store,
    events::{NewEvent, Persisted},
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Events written in one transaction at most.
pub const MAX_BATCH: usize = 200;

/// Queue bound. When full, senders wait for room (backpressure on clients), never drop.
pub const QUEUE_DEPTH: usize = 4096;

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Result<Persisted, Error>>,
}

/// Handle to the persister task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Persister {
    tx: mpsc::Sender<Job>,
    position: watch::Receiver<StreamPos>,
    push: Option<Evaluator>,
}

impl Persister {
    /// Starts the persister task; it runs until `shutdown` fires and its queue is drained.
    /// `push` evaluates every event's push rules (`None`: nobody is notified).
    pub async fn start(
        store: Store,
        bus: Bus,
        push: Option<Evaluator>,
        shutdown: CancellationToken,
    ) -> Result<(Persister, tokio::task::JoinHandle<()>), Error> {
        let next_ordering = store
            .select_max_stream_ordering()
            .await
            .map_err(crate::storage_error)?
            + 1;
        let next_group = store
            .select_max_state_group()
            .await
            .map_err(crate::storage_error)?
            + 1;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (pos_tx, position) = watch::channel(StreamPos(next_ordering - 1));
        let task = Task {
            store,
            bus,
            rx,
            next_ordering,
            next_group,
            pos_tx,
        };
        let handle = tokio::spawn(task.run(shutdown));
        Ok((Persister { tx, position, push }, handle))
    }

    /// Persists one event with the notifications its push rules decide; resolves once
    /// it is committed (and announced). The caller holds the room's lock, so the room
    /// state the rules read is the state before this event.
    pub async fn persist(&self, mut event: NewEvent) -> Result<Persisted, Error> {
        if let Some(push) = &self.push {
            // A failure to evaluate costs the event its notifications, never the event.
            event.push_actions = push.evaluate(&event).await.unwrap_or_else(|e| {
                tracing::warn!(event_id = %event.event_id, error = %e, "push rules not evaluated");
                Vec::new()
            });
        }
        let room_state_changes = event.state_key.is_some() && !event.soft_failed && !event.outlier;
        let room_id = room_state_changes.then(|| event.room_id.clone());
        let out = self.enqueue(event).await;
        if let (Some(push), Some(room_id)) = (&self.push, room_id) {
            push.state_changed(&room_id);
        }
        out
    }

    async fn enqueue(&self, event: NewEvent) -> Result<Persisted, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { event, reply }).await.map_err(|_| {
            Error::new(
                ganglion_core::ErrorKind::Unavailable,
                "server is shutting down",
            )
        })?;
        rx.await
            .map_err(|_| Error::internal("persister dropped the event"))?
    }

    /// A watch of the last committed position of the events stream.
    pub fn position_watch(&self) -> watch::Receiver<StreamPos> {
        self.position.clone()
    }

    /// The last committed position of the events stream.
    pub fn position(&self) -> StreamPos {
        *self.position.borrow()
    }
}

struct Task {
    store: Store,
    bus: Bus,
    rx: mpsc::Receiver<Job>,
    next_ordering: i64,
    next_group: i64,
    pos_tx: watch::Sender<StreamPos>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                job = self.rx.recv() => job,
                // On shutdown, stop taking new work but finish what is queued.
                () = shutdown.cancelled() => { self.rx.close(); self.rx.recv().await }
            };
            let Some(first) = first else { break };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.write(jobs).await;
        }
        tracing::info!("event persister stopped");
    }

    async fn write(&mut self, jobs: Vec<Job>) {
        let events: Vec<NewEvent> = jobs.iter().map(|j| j.event.clone()).collect();
        match self
            .store
            .persist_events(&events, self.next_ordering, self.next_group)
            .await
        {
            Ok(done) => self.finish(jobs, done),
            Err(e) if jobs.len() > 1 => {
                // One bad event must not fail its batch-mates: retry them one by one.
                tracing::warn!(error = %e, batch = jobs.len(), "batch persist failed; retrying singly");
                for job in jobs {
                    let one = [job.event.clone()];
                    match self
                        .store
                        .persist_events(&one, self.next_ordering, self.next_group)
                        .await
                    {
                        Ok(done) => self.finish(vec![job], done),
                        Err(e) => {
                            let _ = job.reply.send(Err(crate::storage_error(e)));
                        }
                    }
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(crate::storage_error(e_clone(&e))));
                }
            }
        }
    }

    fn finish(&mut self, jobs: Vec<Job>, done: Vec<Persisted>) {
        let prev = self.next_ordering - 1;
        let mut rows = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for (job, p) in jobs.into_iter().zip(done) {
            self.next_ordering = self.next_ordering.max(p.stream_ordering + 1);
            if let Some(g) = p.state_group.max(p.last_group) {
                self.next_group = self.next_group.max(g + 1);
            }
            let ev = &job.event;
            rows.push(Row {
                room_id: ev.room_id.clone(),
                event_id: ev.event_id.clone(),
                user_id: if ev.kind == "m.room.member" {
                    ev.state_key.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                kind: ev.kind.clone(),
                state_key: ev.state_key.clone(),
                user_ids: Vec::new(),
                device_id: String::new(),
                server: String::new(),
            });
            replies.push((job.reply, p));
        }
        let pos = self.next_ordering - 1;
        let _ = self.pos_tx.send(StreamPos(pos));
        // Announce before answering, so a client's next request finds readers woken.
        self.bus.publish(Entry {
            writer: String::new(),
            stream: StreamKind::Events as i32,
            prev,
            pos,
            rows,
        });
        for (reply, p) in replies {
            let _ = reply.send(Ok(p));
        }
    }
}

fn e_clone(e: &ganglion_storage::Error) -> ganglion_storage::Error {
    ganglion_storage::Error::Database(e.to_string())
}
