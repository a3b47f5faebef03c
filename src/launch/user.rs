//! The user QEMU runs as: when root launches it, a system user of its own unless asked otherwise.

use std::process::Command;

use super::LaunchError;
use crate::process;

/// The user QEMU runs as when root launches it without `--user`: a system user of its own,
/// created on first use.
pub const SERVICE_USER: &str = "qemu-bridge";

/// The user QEMU runs as (see [`LaunchOptions::user`]).
pub(super) fn qemu_user(requested: Option<&str>) -> Result<Option<String>, LaunchError> {
    if process::effective_uid() != 0 {
        return Ok(requested.map(str::to_string));
    }
    match requested {
        Some("root") => {
            log::info!("QEMU runs as root, as asked (--user root)");
            Ok(None)
        }
        Some(user) => Ok(Some(user.to_string())),
        None => service_user().map(Some),
    }
}

/// The dedicated system user, created when missing (two launches may race to create it).
fn service_user() -> Result<String, LaunchError> {
    let exists = || nix::unistd::User::from_name(SERVICE_USER).ok().flatten().is_some();
    if exists() {
        return Ok(SERVICE_USER.into());
    }
    let output = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
        .args(["--comment", "QEMU started by qemu-bridge", SERVICE_USER])
        .output();
    if exists() {
        log::info!("created the system user {SERVICE_USER} for QEMU");
        return Ok(SERVICE_USER.into());
    }
    Err(LaunchError::NoServiceUser(match output {
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
        Err(err) => format!("cannot run useradd: {err}"),
    }))
}
