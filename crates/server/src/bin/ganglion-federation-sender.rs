//! `ganglion-federation-sender`: the federation-sender role of the split shape. Same
//! flags as `ganglion serve`: `ganglion-federation-sender serve --config PATH`.

fn main() -> std::process::ExitCode {
    ganglion_server::run::worker_main(
        ganglion_server::run::Role::FederationSender,
        "ganglion-federation-sender",
    )
}
