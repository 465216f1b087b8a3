//! `ganglion-main`: the main role of the split shape. Same flags as `ganglion serve`.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use ganglion_server::run::{Role, serve_role};

#[derive(Parser)]
#[command(
    name = "ganglion-main",
    version,
    about = "Ganglion's main process (split shape)"
)]
enum Cli {
    /// Runs the process.
    Serve {
        /// The configuration file (shared by every process; override per process with
        /// GANGLION_<SECTION>__<KEY>, e.g. GANGLION_LISTENERS__CLIENT).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    ganglion_server::run::tame_malloc();
    let Cli::Serve { config } = Cli::parse();
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
    match runtime.block_on(serve_role(Role::Main, &config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ganglion-main: {e}");
            ExitCode::FAILURE
        }
    }
}
