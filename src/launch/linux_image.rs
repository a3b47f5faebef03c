//! The small Linux guest that `launch --linux` boots: Debian's cloud kernel and a busybox
//! initramfs that prints a marker and keeps a counter changing. `scripts/build-guest.sh` builds
//! it from the package registry; this binary carries that script, so that a guest can be built
//! (once, then cached) wherever qemu-bridge is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The build script, as in the source tree.
pub const BUILD_SCRIPT: &str = include_str!("../../scripts/build-guest.sh");

/// Errors of building the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The build script could not be run.
    #[error("cannot run the guest build script (bash)")]
    Spawn(#[source] std::io::Error),
    /// The build script failed.
    #[error("building the Linux guest in {dir} failed: {last_line}")]
    Build {
        /// Where it was built.
        dir: PathBuf,
        /// The last line it printed.
        last_line: String,
    },
}

/// Where the guest is cached when no directory is named: `$XDG_CACHE_HOME/qemu-bridge/linux`,
/// else `/var/cache/qemu-bridge/linux` for root and `~/.cache/qemu-bridge/linux` for others.
pub fn default_dir() -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None if crate::process::effective_uid() == 0 => PathBuf::from("/var/cache"),
        None => std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from).join(".cache"),
    };
    cache.join("qemu-bridge").join("linux")
}

/// The line of the build's mark that names the initramfs of this script (an older one, without
/// what the tests now need of it, is built again).
const INITRAMFS_MARK: &str = "initramfs 10";

/// Whether `dir` holds a complete guest of this script (`vmlinuz`, `initrd.gz`, and the build's
/// mark naming this initramfs).
pub fn is_built(dir: &Path) -> bool {
    ["vmlinuz", "initrd.gz"].iter().all(|file| dir.join(file).is_file())
        && std::fs::read_to_string(dir.join(".complete"))
            .is_ok_and(|mark| mark.lines().any(|line| line == INITRAMFS_MARK))
}

/// Whether `dir` holds a complete guest of this script for `arch` (its build's mark names the
/// architecture; a mark that names none is of an amd64 guest).
fn is_built_for(dir: &Path, arch: &str) -> bool {
    is_built(dir)
        && std::fs::read_to_string(dir.join(".complete")).is_ok_and(|mark| {
            match mark.lines().find_map(|line| line.strip_prefix("arch ")) {
                Some(built) => built == arch,
                None => arch == "amd64",
            }
        })
}

/// Builds the guest in `dir` unless it is there already (downloads two packages with
/// `apt-get download`; needs root only to install `cpio` when it is missing).
///
/// # Errors
///
/// [`GuestError`] when the script cannot run or fails.
pub fn ensure(dir: &Path) -> Result<(), GuestError> {
    ensure_from(dir, "bookworm")
}

/// As [`ensure`], with the kernel of Debian's `suite`: `bookworm` (Linux 6.1) or
/// `bookworm-backports` (Linux 6.12).
///
/// # Errors
///
/// [`GuestError`] when the script cannot run or fails (an unknown suite among the causes).
pub fn ensure_from(dir: &Path, suite: &str) -> Result<(), GuestError> {
    ensure_for(dir, suite, "amd64")
}

/// As [`ensure_from`], for the architecture `arch`: `amd64` or `arm64` (Debian's
/// `linux-image-cloud-arm64` and `busybox-static` for arm64, fetched through an apt directory of
/// the script's own; boot it with `qemu-system-aarch64 -M virt`, whose console is `ttyAMA0`).
///
/// # Errors
///
/// [`GuestError`] when the script cannot run or fails (an unknown suite or architecture among
/// the causes).
pub fn ensure_for(dir: &Path, suite: &str, arch: &str) -> Result<(), GuestError> {
    if is_built_for(dir, arch) {
        return Ok(());
    }
    log::info!("building the {arch} Linux guest in {} (once)", dir.display());
    let output = Command::new("bash")
        .arg("-c")
        .arg(BUILD_SCRIPT)
        .arg("build-guest.sh")
        .arg(dir)
        .arg(suite)
        .arg(arch)
        .output()
        .map_err(GuestError::Spawn)?;
    if output.status.success() && is_built_for(dir, arch) {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(if output.stderr.is_empty() { &output.stdout } else { &output.stderr })
            .into_owned();
    let last_line =
        text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output").to_string();
    Err(GuestError::Build { dir: dir.to_path_buf(), last_line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_script_is_the_one_in_the_tree() {
        let on_disk =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-guest.sh")).unwrap();
        assert_eq!(BUILD_SCRIPT, on_disk);
        let version = INITRAMFS_MARK.strip_prefix("initramfs ").unwrap();
        assert!(BUILD_SCRIPT.contains(&format!("initramfs_version={version}\n")), "the script's mark");
    }

    #[test]
    fn a_directory_without_the_build_mark_is_not_a_guest() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_built(dir.path()));
        for file in ["vmlinuz", "initrd.gz"] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        assert!(!is_built(dir.path()), "a half-built guest (no .complete)");
        std::fs::write(dir.path().join(".complete"), b"linux-image").unwrap();
        assert!(!is_built(dir.path()), "a guest of an older script");
        std::fs::write(dir.path().join(".complete"), format!("linux-image\n{INITRAMFS_MARK}\n")).unwrap();
        assert!(is_built(dir.path()));
        assert!(is_built_for(dir.path(), "amd64"), "a mark without an architecture: amd64");
        assert!(!is_built_for(dir.path(), "arm64"));
        std::fs::write(dir.path().join(".complete"), format!("linux-image\n{INITRAMFS_MARK}\narch arm64\n"))
            .unwrap();
        assert!(is_built_for(dir.path(), "arm64"));
        assert!(!is_built_for(dir.path(), "amd64"), "a guest of another architecture");
    }
}
