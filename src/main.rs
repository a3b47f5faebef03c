//! The `qemu-bridge` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,fuser::mnt=error"))
        .init();
    let cli = qemu_bridge::cli::Cli::parse();
    match qemu_bridge::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("qemu-bridge: error: {}", qemu_bridge::cli::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
