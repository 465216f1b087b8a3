//! ganglion-loadgen: a load generator for Matrix homeservers.
//!
//! It speaks only the standard client-server API over plain HTTP to one base URL, so the same
//! run works against Ganglion, Synapse or any other homeserver with open registration
//! (`m.login.dummy`) and rate limits off. Each scenario sets up its own fresh users and rooms
//! (names carry a random run prefix), measures, and reports figures as JSON lines on stdout
//! (and optionally appended to a file) with human-readable progress on stderr.
//! `bench/run` drives it against both servers; docs/benchmarks.md explains the figures.
//!
//! The federation scenarios ([`fed`], `bench/federation`) also play remote homeservers:
//! fake servers with their own keys and TLS listeners that speak the Server-Server API to
//! the target (signed requests and PDUs, made with ruma's signing code).
//!
//! Depends on no Ganglion crate, and must not: it sees a server only through the public
//! client-server and server-server APIs, exactly as it sees Synapse, so that the comparison
//! is fair (and a change inside Ganglion's federation code cannot change the instrument).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod client;
mod fed;
mod procstat;
mod report;
mod scenarios;
mod stats;

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::client::Http;
use crate::report::Reporter;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Parser, Debug)]
#[command(
    name = "ganglion-loadgen",
    version,
    about = "Matrix homeserver load generator"
)]
struct Cli {
    /// Base URL of the homeserver's client API (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8008", global = true)]
    base_url: String,
    /// Name of the server under test, written into every result.
    #[arg(long, default_value = "server", global = true)]
    label: String,
    /// Also append the JSON result lines to this file.
    #[arg(long, global = true)]
    json_out: Option<String>,
    /// Concurrency of set-up work (registering users, creating rooms, seeding messages).
    #[arg(long, default_value_t = 16, global = true)]
    setup_concurrency: usize,
    /// Wait up to this many seconds for `GET /_matrix/client/versions` to answer first.
    #[arg(long, default_value_t = 60, global = true)]
    wait_ready: u64,
    /// Pid of the server process, when it runs on this machine: adds the server's CPU time
    /// per message (from /proc) to the send figures.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Other processes on this machine whose CPU use during each send measurement is
    /// reported (`NAME=PID`, repeatable), e.g. the sync workers of a split deployment.
    #[arg(long = "observe", global = true, value_parser = parse_observed)]
    observe: Vec<(String, u32)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Registrations per second: N users through /register with m.login.dummy.
    Register(RegisterArgs),
    /// Message sends per second and send latency, over R rooms from C concurrent senders.
    Send(SendArgs),
    /// Sync fan-out: send → delivered to N long-polling clients in one room.
    Fanout(FanoutArgs),
    /// Initial sync (no since token) of a user in R rooms with M messages each.
    InitialSync(InitialSyncArgs),
    /// End-to-end encryption: /keys/claim for many devices, /keys/query for many users, and
    /// one /sendToDevice to many long-polling devices.
    E2ee(E2eeArgs),
    /// Every scenario in turn, as the acceptance benchmark defines it.
    All(AllArgs),
    /// Federation, inbound: a fake remote server sends transactions of 50 PDUs into one room.
    FedInbound(fed::FedInboundArgs),
    /// Federation, outbound: one room's messages fanned out to 20 fake remote servers.
    FedFanout(fed::FedFanoutArgs),
    /// Both federation scenarios, as bench/federation runs them.
    Fed(fed::FedAllArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    /// Users to register.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Rooms the messages are spread over (round-robin).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Messages to send (the measurement stops earlier if --max-seconds runs out).
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Stop issuing new sends after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Unmeasured sends before the measurement (warm caches and connections).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Pace the sends at this many per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Long-polling clients joined to the room.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Messages sent, one at a time.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Pause after every client got a message, before the next send.
    #[arg(long, default_value_t = 300)]
    pub interval_ms: u64,
    /// The long-poll timeout clients ask for.
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    /// Give up on a message this long after its send started (counted as missed).
    #[arg(long, default_value_t = 20.0)]
    pub deliver_timeout_s: f64,
}

#[derive(Args, Debug, Clone)]
pub struct InitialSyncArgs {
    /// Rooms the user is in.
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// Messages in each room.
    #[arg(long, default_value_t = 20)]
    pub messages_per_room: usize,
    /// Measured initial syncs (each on a fresh login); the median is the figure.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[derive(Args, Debug, Clone)]
pub struct E2eeArgs {
    /// Users whose devices one /keys/claim asks a one-time key of.
    #[arg(long, default_value_t = 20)]
    pub claim_users: usize,
    /// Devices of each of those users.
    #[arg(long, default_value_t = 5)]
    pub claim_devices: usize,
    /// Measured /keys/claim requests.
    #[arg(long, default_value_t = 20)]
    pub reps_claim: usize,
    /// Users (one device each) one /keys/query asks for.
    #[arg(long, default_value_t = 500)]
    pub query_users: usize,
    /// Measured /keys/query requests.
    #[arg(long, default_value_t = 20)]
    pub reps_query: usize,
    /// Users whose devices receive the /sendToDevice.
    #[arg(long, default_value_t = 40)]
    pub td_users: usize,
    /// Devices of each of those users, each long-polling /sync.
    #[arg(long, default_value_t = 5)]
    pub td_devices: usize,
    /// Measured /sendToDevice requests.
    #[arg(long, default_value_t = 10)]
    pub reps_to_device: usize,
    /// One-time keys each device uploads at a time.
    #[arg(long, default_value_t = 5)]
    pub otks: usize,
    /// Unmeasured repetitions before each measurement.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Pause after every device got a to-device message, before the next send.
    #[arg(long, default_value_t = 300)]
    pub interval_ms: u64,
    /// The long-poll timeout the recipient devices ask for.
    #[arg(long, default_value_t = 30_000)]
    pub sync_timeout_ms: u64,
    /// Give up on a to-device message this long after its send started (counted as missed).
    #[arg(long, default_value_t = 20.0)]
    pub deliver_timeout_s: f64,
}

impl E2eeArgs {
    /// The counts `all` uses: the defaults, or small ones for `--quick`.
    fn for_all(quick: bool) -> Self {
        let mut a = Self {
            claim_users: 20,
            claim_devices: 5,
            reps_claim: 20,
            query_users: 500,
            reps_query: 20,
            td_users: 40,
            td_devices: 5,
            reps_to_device: 10,
            otks: 5,
            warmup: 1,
            interval_ms: 300,
            sync_timeout_ms: 30_000,
            deliver_timeout_s: 20.0,
        };
        if quick {
            (a.claim_users, a.reps_claim) = (4, 5);
            (a.query_users, a.reps_query) = (50, 5);
            (a.td_users, a.reps_to_device) = (4, 3);
        }
        a
    }
}

#[derive(Args, Debug, Clone)]
struct AllArgs {
    /// Small counts, for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Users for the registration scenario.
    #[arg(long)]
    reg_users: Option<usize>,
    /// Concurrency of the registration scenario.
    #[arg(long, default_value_t = 8)]
    reg_concurrency: usize,
    /// Messages per send measurement at concurrency 1.
    #[arg(long)]
    send_messages_c1: Option<usize>,
    /// Messages per send measurement at concurrency 32.
    #[arg(long)]
    send_messages_c32: Option<usize>,
    /// Time cap of each send measurement.
    #[arg(long)]
    send_max_seconds: Option<f64>,
    /// Long-polling clients in the fan-out scenario.
    #[arg(long, default_value_t = 50)]
    fanout_clients: usize,
    /// Messages in the fan-out scenario.
    #[arg(long)]
    fanout_messages: Option<usize>,
    /// Rooms of the initial-sync user.
    #[arg(long)]
    isync_rooms: Option<usize>,
    /// Messages per room of the initial-sync user.
    #[arg(long)]
    isync_messages: Option<usize>,
    /// Measured initial syncs.
    #[arg(long)]
    isync_runs: Option<usize>,
    /// Scenarios to run, comma-separated, from register,send,fanout,initial-sync,e2ee.
    #[arg(long, default_value = "register,send,fanout,initial-sync,e2ee")]
    only: String,
}

/// What every scenario shares: the connection pool, the reporter and the run's name prefix.
pub struct Ctx {
    pub http: Http,
    pub rep: Reporter,
    /// Random per-run prefix of every user name, so runs never collide.
    pub prefix: String,
    pub password: String,
    pub setup_concurrency: usize,
    pub server_pid: Option<u32>,
    /// Processes whose CPU is reported per send measurement: (name, pid).
    pub observe: Vec<(String, u32)>,
}

fn parse_observed(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {s}"))?;
    let pid = pid.parse().map_err(|e| format!("{s}: {e}"))?;
    Ok((name.to_owned(), pid))
}

impl Ctx {
    /// The server's CPU seconds so far, when its pid is known.
    pub fn server_cpu(&self) -> Option<f64> {
        self.server_pid.and_then(procstat::cpu_seconds)
    }

    pub fn username(&self, what: &str, i: usize) -> String {
        format!("{}_{}_{}", self.prefix, what, i)
    }
}

fn main() -> std::process::ExitCode {
    // reqwest is built with rustls and no default provider (shared with the server).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ganglion-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ganglion-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let http = Http::new(&cli.base_url, 256)?;
    let rep = Reporter::new(&cli.label, cli.json_out.as_deref())?;
    wait_ready(&http, &rep, cli.wait_ready).await?;
    let ctx = Ctx {
        http,
        rep,
        prefix: format!("lg{:08x}", rand::random::<u32>()),
        password: "loadgen-Pa55word".to_owned(),
        setup_concurrency: cli.setup_concurrency.max(1),
        server_pid: cli.server_pid,
        observe: cli.observe.clone(),
    };
    match cli.command {
        Command::Register(a) => scenarios::register::run(&ctx, &a).await,
        Command::Send(a) => {
            let setup = scenarios::send::setup(&ctx, a.rooms).await?;
            scenarios::send::run(&ctx, &setup, &a).await
        }
        Command::Fanout(a) => scenarios::fanout::run(&ctx, &a).await,
        Command::InitialSync(a) => scenarios::initial_sync::run(&ctx, &a).await,
        Command::E2ee(a) => scenarios::e2ee::run(&ctx, &a).await,
        Command::All(a) => run_all(&ctx, &a).await,
        Command::FedInbound(a) => fed::inbound::run(&ctx, &a).await,
        Command::FedFanout(a) => fed::fanout::run(&ctx, &a).await,
        Command::Fed(a) => fed::run_all(&ctx, &a).await,
    }
}

async fn run_all(ctx: &Ctx, a: &AllArgs) -> Result<()> {
    let q = a.quick;
    let only: Vec<&str> = a.only.split(',').map(str::trim).collect();
    let started = Instant::now();
    let mut failures = Vec::new();

    if only.contains(&"register") {
        let args = RegisterArgs {
            users: a.reg_users.unwrap_or(if q { 40 } else { 300 }),
            concurrency: a.reg_concurrency,
        };
        if let Err(e) = scenarios::register::run(ctx, &args).await {
            ctx.rep.say(&format!("register FAILED: {e}"));
            failures.push(format!("register: {e}"));
        }
    }
    if only.contains(&"send") {
        for rooms in [1, 100] {
            let setup = match scenarios::send::setup(ctx, rooms).await {
                Ok(s) => s,
                Err(e) => {
                    ctx.rep
                        .say(&format!("send set-up ({rooms} rooms) FAILED: {e}"));
                    failures.push(format!("send setup rooms={rooms}: {e}"));
                    continue;
                }
            };
            for concurrency in [1, 32] {
                let messages = if concurrency == 1 {
                    a.send_messages_c1.unwrap_or(if q { 60 } else { 2000 })
                } else {
                    a.send_messages_c32.unwrap_or(if q { 300 } else { 20_000 })
                };
                let args = SendArgs {
                    rooms,
                    concurrency,
                    messages,
                    max_seconds: a.send_max_seconds.unwrap_or(if q { 10.0 } else { 30.0 }),
                    warmup: if q { 5 } else { 20 },
                    rate: 0.0,
                };
                if let Err(e) = scenarios::send::run(ctx, &setup, &args).await {
                    ctx.rep
                        .say(&format!("send rooms={rooms} c={concurrency} FAILED: {e}"));
                    failures.push(format!("send rooms={rooms} c={concurrency}: {e}"));
                }
            }
        }
    }
    if only.contains(&"send") {
        // Rooms with other members: each send is evaluated against their push rules.
        for (members, concurrencies) in [(2, &[1, 32][..]), (500, &[32][..])] {
            let members = if q { members.min(20) } else { members };
            let setup = match scenarios::send::setup_members(ctx, members).await {
                Ok(s) => s,
                Err(e) => {
                    ctx.rep
                        .say(&format!("send set-up ({members} members) FAILED: {e}"));
                    failures.push(format!("send setup members={members}: {e}"));
                    continue;
                }
            };
            for &concurrency in concurrencies {
                let args = SendArgs {
                    rooms: 1,
                    concurrency,
                    messages: if q { 100 } else { 5_000 },
                    max_seconds: a.send_max_seconds.unwrap_or(if q { 10.0 } else { 20.0 }),
                    warmup: if q { 5 } else { 20 },
                    rate: 0.0,
                };
                if let Err(e) = scenarios::send::run(ctx, &setup, &args).await {
                    ctx.rep.say(&format!(
                        "send members={members} c={concurrency} FAILED: {e}"
                    ));
                    failures.push(format!("send members={members} c={concurrency}: {e}"));
                }
            }
        }
    }
    if only.contains(&"fanout") {
        let args = FanoutArgs {
            clients: a.fanout_clients,
            messages: a.fanout_messages.unwrap_or(if q { 8 } else { 40 }),
            interval_ms: 300,
            sync_timeout_ms: 30_000,
            deliver_timeout_s: 20.0,
        };
        if let Err(e) = scenarios::fanout::run(ctx, &args).await {
            ctx.rep.say(&format!("fanout FAILED: {e}"));
            failures.push(format!("fanout: {e}"));
        }
    }
    if only.contains(&"initial-sync") {
        let args = InitialSyncArgs {
            rooms: a.isync_rooms.unwrap_or(if q { 30 } else { 200 }),
            messages_per_room: a.isync_messages.unwrap_or(if q { 5 } else { 20 }),
            runs: a.isync_runs.unwrap_or(if q { 3 } else { 5 }),
        };
        if let Err(e) = scenarios::initial_sync::run(ctx, &args).await {
            ctx.rep.say(&format!("initial-sync FAILED: {e}"));
            failures.push(format!("initial-sync: {e}"));
        }
    }
    if only.contains(&"e2ee")
        && let Err(e) = scenarios::e2ee::run(ctx, &E2eeArgs::for_all(q)).await
    {
        ctx.rep.say(&format!("e2ee FAILED: {e}"));
        failures.push(format!("e2ee: {e}"));
    }
    ctx.rep.say(&format!(
        "all scenarios done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} scenario(s) failed: {}",
            failures.len(),
            failures.join("; ")
        )
        .into())
    }
}

async fn wait_ready(http: &Http, rep: &Reporter, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut said = false;
    loop {
        match http.versions().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("server not ready after {seconds}s: {e}").into());
            }
            Err(_) => {
                if !said {
                    rep.say("waiting for the server to answer /_matrix/client/versions");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
