//! A VM's RAM captured to a file: what `qemu-bridge snapshot` and the Python binding's
//! `Vm.snapshot` do, in one place.
//!
//! Four ways, by [`CaptureOptions`]: unchecked (one copy while the guest runs, hashed as it is
//! written), `pause` (the VM paused for the whole copy, resumed if it was running), `consistent`
//! (copies verified page by page against live memory, torn pages copied again), and `update` (the
//! file rewritten in place where its side record says what changed, else written whole).
//! The file is replaced atomically: written beside it, synced, renamed over it; an update writes
//! in place (its side record says whether the file can be trusted).

use std::path::{Path, PathBuf};

use crate::ram::incremental::{update_file, IncrementalError, Origin};
use crate::ram::sparse::SparseWriter;
use crate::ram::{BridgeError, HashAlgorithm, SharedMemoryBridge, Summary, TrackingMethod, Verdict};
use crate::vm::{Vm, VmError, VmInfo};

/// How to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Verify the copy against live memory and copy torn pages again (with `update`: update
    /// again until a pass finds nothing more to write).
    pub consistent: bool,
    /// Pause the VM for the whole copy (resumed afterwards if it was running).
    pub pause: bool,
    /// Update the file in place from its side record where it can.
    pub update: bool,
    /// Find changed pages by fingerprints even where soft-dirty bits exist.
    pub fingerprints: bool,
    /// Most copies (or update passes beyond the first) made.
    pub attempts: u32,
    /// The digest reported.
    pub hash: HashAlgorithm,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            consistent: false,
            pause: false,
            update: false,
            fingerprints: false,
            attempts: crate::ram::DEFAULT_ATTEMPTS,
            hash: HashAlgorithm::Blake3,
        }
    }
}

/// What a capture did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Digest, verdict, attempts, torn pages, size: the line `snapshot` prints.
    pub summary: Summary,
    /// For an update: how the file was brought up to date.
    pub update: Option<UpdateReport>,
}

/// How an update went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    /// `None` when the file was updated in place; else why it was written whole.
    pub full: Option<String>,
    /// Pages written by the first pass.
    pub pages_written: u64,
    /// Pages the first pass looked at.
    pub pages_looked: u64,
    /// Pages of RAM.
    pub pages: usize,
    /// How changed pages were found.
    pub method: TrackingMethod,
}

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// QEMU did not answer (pausing or resuming).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The RAM could not be read.
    #[error("cannot read the RAM of VM {vm}")]
    Ram {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: BridgeError,
    },
    /// The output could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An update failed.
    #[error(transparent)]
    Update(#[from] IncrementalError),
    /// The QEMU process's start time could not be read (an update's record names it).
    #[error("cannot read the start time of QEMU (pid {0})")]
    NoOrigin(u32),
}

/// Captures the RAM of `vm` (mapped as `bridge`, described by `info`) into `path`, telling
/// `progress` the bytes written so far.
///
/// # Errors
///
/// [`CaptureError`]; then `path` is as it was (or, for an update, left without a record, so
/// that the next update writes it whole).
pub fn to_file(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    path: &Path,
    options: &CaptureOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Capture, CaptureError> {
    let ram_error = |source| CaptureError::Ram { vm: info.name.to_string(), source };
    let write_error = |source| CaptureError::Write { path: path.to_path_buf(), source };
    if options.update {
        return update(vm, bridge, info, path, options);
    }
    if !options.pause && !options.consistent {
        // unchecked: copied once, written while another thread hashes what is written
        let mut digest = String::new();
        write_atomically(path, |file| {
            digest =
                bridge.write_snapshot_hashed(file, options.hash, progress).map_err(std::io::Error::other)?;
            Ok(())
        })
        .map_err(write_error)?;
        let summary = Summary {
            algorithm: options.hash,
            digest,
            verdict: Verdict::Unchecked,
            attempts: 1,
            torn_pages: 0,
            size: bridge.size() as u64,
        };
        return Ok(Capture { summary, update: None });
    }
    let snapshot = if options.pause {
        vm.paused_snapshot(bridge)?
    } else {
        bridge.consistent_snapshot(options.attempts).map_err(ram_error)?
    };
    write_atomically(path, |file| {
        // pages of zeros become holes: the file takes the space of what the guest touched
        let mut output = SparseWriter::at(file, 0);
        for chunk in snapshot.data.chunks(4 << 20) {
            output.write(chunk)?;
            progress(output.position());
        }
        output.finish().map(drop)
    })
    .map_err(write_error)?;
    let summary = Summary {
        algorithm: options.hash,
        digest: options.hash.hex_digest(&snapshot.data),
        verdict: snapshot.verdict,
        attempts: snapshot.attempts,
        torn_pages: snapshot.torn_pages,
        size: snapshot.data.len() as u64,
    };
    Ok(Capture { summary, update: None })
}

/// The soft-dirty source of the VM's RAM, unless fingerprints were asked for or the host has
/// none (then the reason is logged).
pub fn soft_dirty_unless(
    fingerprints: bool,
    info: &VmInfo,
    bridge: &SharedMemoryBridge,
) -> Option<std::sync::Arc<crate::ram::soft_dirty::SoftDirty>> {
    if fingerprints {
        return None;
    }
    crate::ram::tracker::soft_dirty_for(info.qemu_pid, bridge.mapping())
        .inspect_err(|why| log::info!("VM {}: changes tracked by fingerprints: {why}", info.name))
        .ok()
}

/// `update`: the pages that changed, written in place; paused, or verified by passes that find
/// nothing more to write, as a full capture is.
fn update(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    path: &Path,
    options: &CaptureOptions,
) -> Result<Capture, CaptureError> {
    let origin = Origin::of(info.name.as_str(), info.qemu_pid, bridge.size() as u64)
        .ok_or(CaptureError::NoOrigin(info.qemu_pid))?;
    let paused = options.pause && vm.with_qmp(|qmp| qmp.query_status())?.running;
    if paused {
        vm.with_qmp(|qmp| qmp.stop())?;
    }
    let soft_dirty = soft_dirty_unless(options.fingerprints, info, bridge);
    let pass = || update_file(bridge.mapping(), &origin, path, soft_dirty.as_deref());
    let mut passes = vec![pass()];
    // consistent: again until a pass finds nothing more to write
    while options.consistent
        && (passes.len() as u32) < options.attempts.max(1) + 1
        && passes.last().is_some_and(|pass| pass.as_ref().is_ok_and(|pass| pass.pages_written > 0))
    {
        passes.push(pass());
    }
    if paused {
        vm.with_qmp(|qmp| qmp.cont())?;
    }
    let passes: Vec<_> = passes.into_iter().collect::<Result<_, _>>()?;
    let (first, last) = (&passes[0], &passes[passes.len() - 1]);
    let verdict = if options.pause {
        Verdict::Paused
    } else if !options.consistent {
        Verdict::Unchecked
    } else if passes.len() > 1 && last.pages_written == 0 {
        Verdict::Consistent
    } else {
        Verdict::Torn
    };
    let digest = match options.hash {
        HashAlgorithm::Blake3 => last.digest.clone(),
        algorithm => hash_file(path, algorithm)
            .map_err(|source| CaptureError::Write { path: path.to_path_buf(), source })?,
    };
    let summary = Summary {
        algorithm: options.hash,
        digest,
        verdict,
        attempts: passes.len() as u32,
        torn_pages: if verdict == Verdict::Torn { last.pages_written } else { 0 },
        size: bridge.size() as u64,
    };
    let method = if soft_dirty.is_some() { TrackingMethod::SoftDirty } else { TrackingMethod::Fingerprints };
    let update = UpdateReport {
        full: first.full.clone(),
        pages_written: first.pages_written,
        pages_looked: first.pages_looked,
        pages: bridge.mapping().pages(),
        method,
    };
    Ok(Capture { summary, update: Some(update) })
}

/// The digest of the file at `path`.
fn hash_file(path: &Path, algorithm: HashAlgorithm) -> std::io::Result<String> {
    let mut hasher = algorithm.hasher();
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 4 << 20];
    loop {
        let read = std::io::Read::read(&mut file, &mut chunk)?;
        if read == 0 {
            return Ok(hasher.finalize_hex());
        }
        hasher.update(&chunk[..read]);
    }
}

/// Writes `path` through `fill` into a temporary file beside it, synced, then renamed over it:
/// readers see the old file or the whole new one, never a partial write (which is removed on
/// failure).
///
/// # Errors
///
/// A path with no file name, or what creating, filling, syncing or renaming returned.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file name", path.display()),
        )
    })?;
    let temporary = dir.join(format!(".{}.partial-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        fill(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn atomic_write_leaves_no_partial_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/out.bin");
        assert!(write_atomically(&missing, |f| f.write_all(b"x")).is_err());
        let target = dir.path().join("out.bin");
        // a failing writer leaves nothing, not even the temporary file
        assert!(write_atomically(&target, |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomically(&target, |f| f.write_all(b"hello")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
