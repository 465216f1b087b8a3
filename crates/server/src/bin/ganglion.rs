//! `ganglion`: the all-in-one homeserver, and its admin subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ganglion_server::{build_all, config, run};

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
        /// This process's instance name: its `[processes.<instance>]` section may give
        /// it a role (main, sync) and listeners.
        #[arg(long)]
        instance: Option<String>,
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
    /// Prints the reverse-proxy configuration generated from the route table: nginx
    /// (`--listen`, `--main`, `--sync`) or Kubernetes Ingress (`--format ingress --host`).
    GenerateProxy {
        /// `nginx` or `ingress`.
        #[arg(long, default_value = "nginx")]
        format: String,
        /// Where nginx listens (`host:port`).
        #[arg(long, required_if_eq("format", "nginx"))]
        listen: Option<String>,
        /// main's client listener (`host:port`).
        #[arg(long, required_if_eq("format", "nginx"))]
        main: Option<String>,
        /// Sync workers' client listeners (`host:port`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        sync: Vec<String>,
        /// The public host name the Ingress serves.
        #[arg(long, default_value = "matrix.example.org")]
        host: String,
        /// The TLS Secret of the Ingress (none: no `tls` section).
        #[arg(long)]
        tls_secret: Option<String>,
    },
    /// Rotates the server's signing key: keeps the current key file as
    /// `<path>.retired-<version>`, creates a new key, and prints the
    /// `[federation.old_signing_keys]` entry to add to the configuration so that what the
    /// old key signed stays verifiable. Restart every process afterwards.
    RotateSigningKey {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
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

fn main() -> ExitCode {
    run::init_process();
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
    match cli.command.unwrap_or(Command::Serve {
        config: None,
        instance: None,
    }) {
        Command::GenerateConfig {
            server_name,
            output,
        } => {
            config::generate(&output, &server_name)?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Serve {
            config: path,
            instance,
        } => {
            let path = config_path(path)?;
            run::serve_role(None, &path, instance.as_deref()).await
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
        Command::GenerateProxy {
            format,
            listen,
            main,
            sync,
            host,
            tls_secret,
        } => {
            use ganglion_server::routes;
            let conf = match (format.as_str(), listen, main) {
                ("nginx", Some(listen), Some(main)) => {
                    routes::nginx_config(&listen, &routes::Upstreams { main, sync })
                }
                ("ingress", _, _) => routes::ingress_yaml(&host, tls_secret.as_deref()),
                _ => return Err("--format: nginx (with --listen and --main) or ingress".into()),
            };
            std::io::Write::write_all(&mut std::io::stdout(), conf.as_bytes())?;
            Ok(())
        }
        Command::RotateSigningKey { config: path } => {
            let path = config_path(path)?;
            let cfg = config::load(Some(&path))?;
            let key_path = cfg.signing_key_path();
            let old = ganglion_federation_client::ServerKey::load_or_generate(&key_path)?;
            let version = old.key_id.trim_start_matches("ed25519:").to_owned();
            let retired = format!("{key_path}.retired-{version}");
            std::fs::rename(&key_path, &retired)
                .map_err(|e| format!("cannot move {key_path} to {retired}: {e}"))?;
            let new = ganglion_federation_client::ServerKey::load_or_generate(&key_path)?;
            let now = ganglion_core::time::now_ms();
            eprintln!(
                "new signing key {} in {key_path}; the old one is kept in {retired}",
                new.key_id
            );
            let snippet = format!(
                "[federation.old_signing_keys.\"{}\"]\nkey = \"{}\"\nexpired_ts = {now}\n",
                old.key_id, old.public_base64
            );
            std::io::Write::write_all(&mut std::io::stdout(), snippet.as_bytes())?;
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
