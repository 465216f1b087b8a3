//! Elastic membership (docs/decisions/0003-membership-leases.md). Every process of a role holds a lease row in the
//! database and renews it each heartbeat; the role's live members are the rows whose
//! lease has not run out. Keys of sharded work (federation destinations, push users) go
//! to members by rendezvous hashing, so a member joining or leaving moves only the keys
//! it gains or loses, and nobody restarts. A key's durable cursor lives in the database
//! ([`Membership::cursor`], [`Membership::advance`]), so a new owner resumes where the
//! last one committed.
//!
//! Two members can disagree about the membership for up to one heartbeat after a change;
//! sharded work must tolerate a key briefly owned twice (federation resends are
//! deduplicated by transaction id) and must never depend on exclusive ownership.

use std::{sync::Arc, time::Duration};

use ganglion_storage::{Store, cluster::Member};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The live members of a role, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Instance names, sorted.
    pub members: Vec<String>,
}

impl View {
    /// The member that owns `key` (none when the view is empty).
    pub fn owner(&self, key: &str) -> Option<&str> {
        owner(key, &self.members)
    }
}

/// The rendezvous (highest random weight) owner of `key` among `members`.
pub fn owner<'a>(key: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (weight(m, key), m.as_str()))
        .map(String::as_str)
}

/// A stable 64-bit weight of (member, key): FNV-1a over both, separated by a byte no
/// instance name has, then the SplitMix64 finaliser so nearby inputs spread. Stable
/// across builds and versions (unlike `std`'s hasher), so processes of different
/// releases agree during a rolling upgrade.
pub fn weight(member: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How a process takes part in its role's membership.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The role (`sync`, `federation-sender`, `push`, …).
    pub role: String,
    /// This process's instance name.
    pub instance: String,
    /// How often the lease is renewed.
    pub heartbeat: Duration,
    /// How long a lease outlives its last renewal.
    pub lease: Duration,
}

/// This process's membership of its role. Cheap to clone; leaves when the shutdown
/// token passed to [`Membership::join`] is cancelled.
#[derive(Debug, Clone)]
pub struct Membership {
    inner: Arc<Inner>,
    view: watch::Receiver<View>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    settings: Settings,
    incarnation: String,
    left: CancellationToken,
}

impl Membership {
    /// Takes a lease (so that this process is a member when this returns) and keeps
    /// renewing it until `shutdown`, then leaves cleanly.
    pub async fn join(
        store: Store,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<Membership, ganglion_storage::Error> {
        let incarnation = {
            use rand::Rng;
            let mut rng = rand::rng();
            format!("{:016x}", rng.random::<u64>())
        };
        let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
        let (members, previous) = store
            .renew_member(&settings.role, &settings.instance, &incarnation, lease_ms)
            .await?;
        if let Some(previous) = previous {
            tracing::warn!(
                role = %settings.role,
                instance = %settings.instance,
                %previous,
                "took over a live lease of the same name (a restart, or two processes sharing a name)"
            );
        }
        let view = view_of(&members);
        tracing::info!(role = %settings.role, instance = %settings.instance, members = ?view.members, "joined");
        record(&settings.role, &view);
        let (tx, rx) = watch::channel(view);
        let inner = Arc::new(Inner {
            store,
            settings,
            incarnation,
            left: CancellationToken::new(),
        });
        tokio::spawn(heartbeat(inner.clone(), tx, shutdown));
        Ok(Membership { inner, view: rx })
    }

    /// This process's instance name.
    pub fn instance(&self) -> &str {
        &self.inner.settings.instance
    }

    /// The role's live members as last seen.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A watch that changes whenever the live membership does.
    pub fn changes(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Whether this process owns `key` in the current view.
    pub fn owns(&self, key: &str) -> bool {
        self.view.borrow().owner(key) == Some(self.instance())
    }

    /// Resolves once this process has left (after shutdown).
    pub async fn left(&self) {
        self.inner.left.cancelled().await;
    }

    /// The committed cursor of a key of this role (`None`: never advanced).
    pub async fn cursor(&self, key: &str) -> Result<Option<i64>, ganglion_storage::Error> {
        self.inner
            .store
            .select_shard_cursor(&self.inner.settings.role, key)
            .await
    }

    /// Commits a key's cursor forward (it never moves back, so a late write from a
    /// previous owner cannot undo a newer one). Returns the cursor now stored.
    pub async fn advance(&self, key: &str, position: i64) -> Result<i64, ganglion_storage::Error> {
        self.inner
            .store
            .advance_shard_cursor(
                &self.inner.settings.role,
                key,
                position,
                &self.inner.settings.instance,
            )
            .await
    }
}

fn view_of(members: &[Member]) -> View {
    View {
        members: members.iter().map(|m| m.instance.clone()).collect(),
    }
}

fn record(role: &str, view: &View) {
    metrics::gauge!("ganglion_cluster_members", "role" => role.to_owned())
        .set(view.members.len() as f64);
}

async fn heartbeat(inner: Arc<Inner>, tx: watch::Sender<View>, shutdown: CancellationToken) {
    let s = &inner.settings;
    let lease_ms = i64::try_from(s.lease.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(s.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        match inner
            .store
            .renew_member(&s.role, &s.instance, &inner.incarnation, lease_ms)
            .await
        {
            Ok((members, _)) => {
                let view = view_of(&members);
                tx.send_if_modified(|v| {
                    if *v == view {
                        return false;
                    }
                    tracing::info!(role = %s.role, from = ?v.members, to = ?view.members, "membership changed");
                    record(&s.role, &view);
                    *v = view;
                    true
                });
            }
            // The lease keeps running for `lease` after the last renewal: a database
            // blip shorter than that changes nothing for anyone.
            Err(e) => tracing::warn!(role = %s.role, error = %e, "lease renewal failed; retrying"),
        }
    }
    if let Err(e) = inner
        .store
        .remove_member(&s.role, &s.instance, &inner.incarnation)
        .await
    {
        tracing::warn!(role = %s.role, error = %e, "could not leave cleanly; the lease will run out");
    } else {
        tracing::info!(role = %s.role, instance = %s.instance, "left");
    }
    inner.left.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("sender-{i}")).collect()
    }

    #[test]
    fn keys_spread_evenly_over_members() {
        let members = names(4);
        let mut counts = [0usize; 4];
        for k in 0..8000 {
            let o = owner(&format!("server{k}.example"), &members).unwrap_or_default();
            let i = members.iter().position(|m| m == o).unwrap_or(0);
            counts[i] += 1;
        }
        for c in counts {
            assert!((1600..=2400).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn a_leaver_moves_only_its_keys_and_a_joiner_takes_only_keys() {
        let three = names(3);
        let two: Vec<String> = three[..2].to_vec();
        let four = names(4);
        let mut moved_on_join = 0;
        for k in 0..3000 {
            let key = format!("@u{k}:example.org");
            let before = owner(&key, &three);
            // Leaving: keys of the survivors stay where they were.
            if before != Some("sender-2") {
                assert_eq!(owner(&key, &two), before, "{key} moved off a survivor");
            }
            // Joining: a key either stays or goes to the joiner.
            let after = owner(&key, &four);
            if after != before {
                assert_eq!(after, Some("sender-3"), "{key} moved between old members");
                moved_on_join += 1;
            }
        }
        assert!(
            (600..=900).contains(&moved_on_join),
            "the joiner should take about a quarter: {moved_on_join}"
        );
    }

    #[test]
    fn weights_are_stable_across_builds() {
        // Fixed values: a change here would reshuffle every deployment's keys on upgrade.
        assert_eq!(weight("a", "b"), 6_137_638_104_319_202_169);
        assert_eq!(
            weight("sync-1", "@alice:example.org"),
            13_836_127_447_763_941_556
        );
        assert_ne!(weight("a", "b"), weight("b", "a"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
        assert_eq!(owner("k", &[]), None);
    }
}
