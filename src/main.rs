//! The `qemu-bridge` command: parses the command line, runs the verb, prints the error chain.

// The command is a thin front end over the library; raw memory is the library's business.
#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
    let cli = cli::Cli::parse_from(argv);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(cli.log_filter())).init();
    match cli::run(cli) {
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
            ExitCode::from(exit_code(err.as_ref()))
        }
    }
}

/// The exit status of a failure, for scripts (the man page's EXIT STATUS): 3 no such VM, 4 refused
/// by the trust check, 5 QEMU did not answer (its QMP socket timed out, closed or cannot be
/// reached), 1 anything else (2, a usage error, is clap's).
fn exit_code(err: &(dyn std::error::Error + 'static)) -> u8 {
    use qemu_bridge::{capture::CaptureError, QmpError, VmError};
    fn of_qmp(err: &QmpError) -> Option<u8> {
        matches!(err, QmpError::Timeout | QmpError::Connect { .. } | QmpError::Closed | QmpError::Io(_))
            .then_some(5)
    }
    fn of_vm(err: &VmError) -> Option<u8> {
        match err {
            VmError::NotFound { .. } => Some(3),
            VmError::UntrustedPeer { .. } | VmError::Untrusted { .. } => Some(4),
            VmError::Qmp { source, .. } => of_qmp(source),
            _ => None,
        }
    }
    let mut current = Some(err);
    while let Some(err) = current {
        let code = err
            .downcast_ref::<VmError>()
            .and_then(of_vm)
            .or_else(|| err.downcast_ref::<QmpError>().and_then(of_qmp))
            // transparent: its source is the VM error's own source, not the VM error
            .or_else(|| match err.downcast_ref::<CaptureError>() {
                Some(CaptureError::Vm(vm)) => of_vm(vm),
                _ => None,
            });
        if let Some(code) = code {
            return code;
        }
        current = err.source();
    }
    1
}
