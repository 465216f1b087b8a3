//! `ganglion-main`: the main role of the split shape. Same flags as `ganglion serve`:
//! `ganglion-main serve --config PATH`.

fn main() -> std::process::ExitCode {
    ganglion_server::run::worker_main(ganglion_server::run::Role::Main, "ganglion-main")
}
