//! Federation scenarios: the load generator plays remote homeservers against a target that
//! federates on loopback with the test CA (tests/federation/make-ca.sh), Ganglion or
//! Synapse alike. It speaks only the public APIs: the client-server API for the target's
//! local user, the Server-Server API for the fake servers (their own keys, signed requests,
//! signed and hashed PDUs). See docs/benchmarks.md, "Federation".
//!
//! - [`inbound`]: one fake server's user joins a room of the target and sends it
//!   transactions of 50 PDUs; events accepted per second.
//! - [`fanout`]: 20 fake servers each join one user to one room; the target's local user
//!   sends messages, and each fake records when each message reached it.

pub mod fake;
pub mod fanout;
pub mod identity;
pub mod inbound;
pub mod remote;

use clap::Args;
use ruma::RoomVersionId;

use crate::{Ctx, Result};

/// Where the target is and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct FedTarget {
    /// The target's server name, `localhost:FEDPORT`; its federation listener is
    /// `https://<name>`.
    #[arg(long)]
    pub target: String,
    /// The test CA's directory (tests/federation/make-ca.sh): `ca.pem` is trusted for the
    /// target, and the fake servers serve `<cert-name>.pem`/`.key` from it.
    #[arg(long)]
    pub ca_dir: String,
    /// File name, without `.pem`/`.key`, of the fake servers' certificate in --ca-dir.
    #[arg(long, default_value = "loadgen")]
    pub cert_name: String,
    /// Room version of the rooms the scenarios create on the target (the same for every
    /// target, so that they check the same event format).
    #[arg(long, default_value = "11")]
    pub room_version: String,
}

impl FedTarget {
    fn ca_file(&self) -> String {
        format!("{}/ca.pem", self.ca_dir)
    }

    fn tls(&self) -> Result<std::sync::Arc<rustls::ServerConfig>> {
        fake::tls_config(
            &format!("{}/{}.pem", self.ca_dir, self.cert_name),
            &format!("{}/{}.key", self.ca_dir, self.cert_name),
        )
    }

    fn version(&self) -> Result<RoomVersionId> {
        Ok(RoomVersionId::try_from(self.room_version.as_str())?)
    }

    fn remote(&self) -> Result<remote::Remote> {
        remote::Remote::new(&self.target, &self.ca_file())
    }
}

#[derive(Args, Debug, Clone)]
pub struct FedInboundArgs {
    #[command(flatten)]
    pub target: FedTarget,
    /// Measured transactions, sent one after another.
    #[arg(long, default_value_t = 40)]
    pub transactions: usize,
    /// PDUs in each transaction (the spec's maximum is 50).
    #[arg(long, default_value_t = 50)]
    pub pdus_per_txn: usize,
    /// Unmeasured transactions first (connections, key caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
}

#[derive(Args, Debug, Clone)]
pub struct FedFanoutArgs {
    #[command(flatten)]
    pub target: FedTarget,
    /// Fake servers, each with one user in the room.
    #[arg(long, default_value_t = 20)]
    pub destinations: usize,
    /// Messages of the paced phase.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Sends per second in the paced phase (started on schedule, whether or not the
    /// previous one was answered).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Messages of the burst phase, sent one after another as fast as the target answers
    /// (0: no burst phase).
    #[arg(long, default_value_t = 200)]
    pub burst_messages: usize,
    /// Give up waiting for deliveries this long after a phase's last send.
    #[arg(long, default_value_t = 120.0)]
    pub deliver_timeout_s: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FedAllArgs {
    #[command(flatten)]
    pub target: FedTarget,
    /// Small counts, for smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run, comma-separated, from inbound,fanout.
    #[arg(long, default_value = "inbound,fanout")]
    pub only: String,
}

/// Both federation scenarios, full or quick counts.
pub async fn run_all(ctx: &Ctx, a: &FedAllArgs) -> Result<()> {
    let q = a.quick;
    let only: Vec<&str> = a.only.split(',').map(str::trim).collect();
    let mut failures = Vec::new();
    if only.contains(&"inbound") {
        let args = FedInboundArgs {
            target: a.target.clone(),
            transactions: if q { 4 } else { 40 },
            pdus_per_txn: 50,
            warmup: 1,
        };
        if let Err(e) = inbound::run(ctx, &args).await {
            ctx.rep.say(&format!("fed-inbound FAILED: {e}"));
            failures.push(format!("fed-inbound: {e}"));
        }
    }
    if only.contains(&"fanout") {
        let args = FedFanoutArgs {
            target: a.target.clone(),
            destinations: 20,
            messages: if q { 30 } else { 200 },
            rate: 10.0,
            burst_messages: if q { 30 } else { 200 },
            deliver_timeout_s: if q { 60.0 } else { 120.0 },
        };
        if let Err(e) = fanout::run(ctx, &args).await {
            ctx.rep.say(&format!("fed-fanout FAILED: {e}"));
            failures.push(format!("fed-fanout: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
