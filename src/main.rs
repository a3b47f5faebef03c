//! The `qemu-bridge` command: parses the command line, runs the verb, prints the error chain.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,fuser::mnt=error"))
        .init();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("qemu-bridge: error: {}", qemu_bridge::error::chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
