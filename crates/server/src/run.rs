//! Running a process of one role until a shutdown signal: shared by the `ganglion`,
//! `ganglion-main` and `ganglion-sync` binaries, which differ only in the role they pick.

use std::path::Path;

use crate::{build_all, config, serve, telemetry, worker};

/// What every binary does first, before any thread starts.
///
/// - Installs the one rustls crypto provider (ring) every TLS client and listener uses.
/// - Fixes glibc's mmap threshold: glibc raises it to the largest block freed so far, so
///   after the first 19 MiB argon2 buffer every later one came from the heap and was
///   never given back (RSS grew by 19 MiB per password hash to a 1.5 GB plateau under
///   load). At 1 MiB, large buffers stay in mmap and return to the system on free.
pub fn init_process() {
    ganglion_federation_client::client::install_crypto_provider();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every role in one process (in-process or Redis bus).
    All,
    /// Main in the split shape: every writer, and every endpoint no worker claims.
    Main,
    /// A sync worker: `/sync` and stateless reads over the Redis bus.
    Sync,
    /// A federation sender: outbound transactions to the destinations it owns.
    FederationSender,
}

impl Role {
    /// The name used in config sections, membership and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Main => "main",
            Role::Sync => "sync",
            Role::FederationSender => "federation-sender",
        }
    }

    /// The role of a name (`[processes.<instance>] role`).
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::All, Role::Main, Role::Sync, Role::FederationSender]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// The whole `main` of a worker binary (`ganglion-main`, `ganglion-sync`): parses
/// `serve --config PATH`, runs the role, maps the outcome to an exit code.
pub fn worker_main(role: Role, name: &str) -> std::process::ExitCode {
    use clap::Parser;

    #[derive(Parser)]
    enum Cli {
        /// Runs the process.
        Serve {
            /// The configuration file (shared by every process; override per process with
            /// GANGLION_<SECTION>__<KEY>, e.g. GANGLION_LISTENERS__CLIENT).
            #[arg(long)]
            config: std::path::PathBuf,
            /// This process's instance name: picks its `[processes.<instance>]` section
            /// (default: `cluster.instance`, else <role>-<host>-<pid>).
            #[arg(long)]
            instance: Option<String>,
        },
    }

    init_process();
    let Cli::Serve { config, instance } = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_role(Some(role), &config, instance.as_deref())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads the configuration at `path` for the process `instance`, builds the role's
/// services, joins the role's membership and serves until SIGTERM or Ctrl-C. `binary`
/// is the role a worker binary is for; `None` (`ganglion serve`) takes the role from the
/// instance's `[processes.<instance>]` section, default every role.
pub async fn serve_role(
    binary: Option<Role>,
    path: &Path,
    instance: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let guess = binary.unwrap_or(Role::All);
    let (cfg, section_role) = config::load_process(Some(path), instance, guess.name())?;
    let named = section_role.as_deref().map(|n| {
        Role::from_name(n).ok_or_else(|| format!("processes.<instance>.role: unknown role {n}"))
    });
    let role = match (binary, named.transpose()?) {
        (Some(b), Some(n)) if b != n => {
            return Err(format!(
                "processes.<instance>.role: this binary runs the {} role, the section says {}",
                b.name(),
                n.name()
            )
            .into());
        }
        (Some(b), _) => b,
        (None, Some(n)) => n,
        (None, None) => Role::All,
    };
    let instance = cfg
        .cluster
        .instance
        .clone()
        .unwrap_or_else(|| role.name().into());
    telemetry::init_logging(&cfg.logging);
    let metrics_handle = telemetry::init_metrics();
    let client_addr = cfg.listeners.client;
    let metrics_addr = cfg.listeners.metrics;
    let internal_addr = cfg.listeners.internal;
    let federation_addr = cfg.listeners.federation.filter(|_| cfg.federation.enabled);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        role = role.name(),
        %instance,
        server_name = %cfg.server.server_name,
        config = %path.display(),
        "Ganglion starting"
    );
    let database = redact_url(&cfg.database_url());
    let server = match role {
        Role::All => build_all(cfg).await?,
        Role::Main => {
            if cfg.bus.redis_url.is_none() {
                return Err("bus.redis_url: main in the split shape needs the Redis bus".into());
            }
            build_all(cfg).await?
        }
        Role::Sync | Role::FederationSender => worker::build_worker(cfg, &instance, role).await?,
    };
    let mut server = server;
    let c = &server.config.cluster;
    let membership = ganglion_cluster::Membership::join(
        server.store.clone(),
        ganglion_cluster::Settings {
            role: role.name().into(),
            instance: instance.clone(),
            heartbeat: std::time::Duration::from_millis(c.heartbeat_ms),
            lease: std::time::Duration::from_millis(c.lease_ms),
        },
        server.tasks.clone(),
    )
    .await?;
    if role == Role::FederationSender {
        worker::start_federation_sender(&server, membership.clone())?;
    }
    server.membership = Some(membership);
    let listener = tokio::net::TcpListener::bind(client_addr)
        .await
        .map_err(|e| format!("cannot listen on {client_addr}: {e}"))?;
    let internal = match (internal_addr, role) {
        (Some(addr), Role::Main | Role::All) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "internal listener (for workers) listening");
            Some(l)
        }
        (Some(addr), _) => {
            tracing::warn!(%addr, "listeners.internal is only for main; ignored");
            None
        }
        (None, _) => None,
    };
    let federation = match (federation_addr, role) {
        (Some(addr), Role::Main | Role::All) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "federation listening (TLS)");
            Some(l)
        }
        _ => None,
    };
    let metrics = match (metrics_addr, metrics_handle) {
        (Some(addr), Some(handle)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "metrics listening");
            Some((l, handle))
        }
        _ => None,
    };
    tracing::info!(
        url = %format!("http://{client_addr}/"),
        role = role.name(),
        server_name = %server.config.server.server_name,
        database = %database,
        "Ganglion listening"
    );
    serve(
        server,
        listener,
        metrics,
        internal,
        federation,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Hides a password in a database URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_logged_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://data/g.db"), "sqlite://data/g.db");
    }
}
