//! `ganglion-sync`: the sync role of the split shape. Same flags as `ganglion serve`:
//! `ganglion-sync serve --config PATH`.

fn main() -> std::process::ExitCode {
    ganglion_server::run::worker_main(ganglion_server::run::Role::Sync, "ganglion-sync")
}
