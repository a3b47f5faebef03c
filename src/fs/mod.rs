//! The FUSE file system (placeholder until the mount lands).

use std::path::{Path, PathBuf};

/// `mount` arguments.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Where to mount
    pub mountpoint: PathBuf,
}

/// Runs `mount`.
///
/// # Errors
///
/// Always, for now.
pub fn mount_verb(_args: MountArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("mount is not implemented yet".into())
}

/// Unmounts `mountpoint`.
///
/// # Errors
///
/// Always, for now.
pub fn umount(_mountpoint: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("umount is not implemented yet"))
}
