//! The `qemu-bridge` command: parses the command line, runs the verb, prints the error chain.

// The command is a thin front end over the library; raw memory is the library's business.
#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,fuser::mnt=error"))
        .init();
    // mount(8) runs `qemu-bridge SOURCE MOUNTPOINT -o OPTIONS` (through mount.fuse3)
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = match cli::from_mount_helper(&argv) {
        None => argv,
        Some(Ok(translated)) => translated,
        Some(Err(err)) => {
            eprintln!("qemu-bridge: error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli::run(cli::Cli::parse_from(argv)) {
        Ok(()) => ExitCode::SUCCESS,
        // the reader went away (`| head`): what it did not read is nobody's error
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("qemu-bridge: error: {}", qemu_bridge::error::chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
