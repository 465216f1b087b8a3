//! `ganglion`: the all-in-one homeserver, and its admin subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ganglion_server::{build_all, config, serve, telemetry};

#[derive(Parser)]
#[command(name = "ganglion", version, about = "A Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (every role in one process). Without --config, uses
    /// ./data/ganglion.toml, creating it on first start.
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Writes a documented configuration file.
    GenerateConfig {
        /// The server name to put in it.
        #[arg(long, default_value = "localhost:8008")]
        server_name: String,
        /// Where to write it.
        #[arg(long, default_value = "data/ganglion.toml")]
        output: PathBuf,
    },
    /// Registers a user (works whether or not registration is open).
    RegisterUser {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The localpart (e.g. alice).
        #[arg(long)]
        user: String,
        /// The password.
        #[arg(long)]
        password: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Applies database migrations and exits.
    Migrate {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

const DEFAULT_CONFIG: &str = "data/ganglion.toml";

/// The config path: the one given, or ./data/ganglion.toml (created if missing).
fn config_path(given: Option<PathBuf>) -> Result<PathBuf, config::ConfigError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let p = PathBuf::from(DEFAULT_CONFIG);
    if !p.exists() {
        config::generate(&p, "localhost:8008")?;
        eprintln!("created {} with default settings", p.display());
    }
    Ok(p)
}

/// glibc raises its mmap threshold to the largest block freed so far, so after the first
/// 19 MiB argon2 buffer every later one comes from the heap and is never given back: RSS
/// grew by 19 MiB per password hash until it plateaued near 1.5 GB under load. A fixed
/// 1 MiB threshold keeps large buffers in mmap, returned to the system on free.
fn tame_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

fn main() -> ExitCode {
    tame_malloc();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ganglion: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::GenerateConfig {
            server_name,
            output,
        } => {
            config::generate(&output, &server_name)?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Serve { config: path } => {
            let path = config_path(path)?;
            let cfg = config::load(Some(&path))?;
            telemetry::init_logging(&cfg.logging);
            let metrics_handle = telemetry::init_metrics();
            let client_addr = cfg.listeners.client;
            let metrics_addr = cfg.listeners.metrics;
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                server_name = %cfg.server.server_name,
                config = %path.display(),
                "Ganglion starting"
            );
            let database = redact_url(&cfg.database_url());
            let server = build_all(cfg).await?;
            let listener = tokio::net::TcpListener::bind(client_addr)
                .await
                .map_err(|e| format!("cannot listen on {client_addr}: {e}"))?;
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
                server_name = %server.config.server.server_name,
                database = %database,
                "Ganglion listening"
            );
            serve(server, listener, metrics, shutdown_signal()).await?;
            Ok(())
        }
        Command::RegisterUser {
            config: path,
            user,
            password,
            admin,
        } => {
            let path = config_path(path)?;
            let cfg = config::load(Some(&path))?;
            let server = build_all(cfg).await?;
            let user_id = server
                .accounts
                .register_user(&user, Some(&password), admin)
                .await?;
            eprintln!(
                "registered {user_id}{}",
                if admin { " (admin)" } else { "" }
            );
            server.tasks.cancel();
            let _ = server.persister_task.await;
            server.store.close().await;
            Ok(())
        }
        Command::Migrate { config: path } => {
            let path = config_path(path)?;
            let cfg = config::load(Some(&path))?;
            let store = ganglion_storage::Store::connect(
                &cfg.database_url(),
                2,
                std::time::Duration::from_secs(30),
            )
            .await?;
            let applied = store.migrate().await?;
            eprintln!("applied migrations: {applied:?}");
            store.close().await;
            Ok(())
        }
    }
}

/// Hides a password in a database URL for logs.
fn redact_url(url: &str) -> String {
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
