//! The `durable` command; see the crate's documentation.

fn main() -> std::process::ExitCode {
    durable_cli::run(std::env::args_os())
}
