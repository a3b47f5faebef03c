//! A VM's RAM captured to a file: what `qemu-bridge snapshot` and the Python binding's
//! `Vm.snapshot` do, in one place.
//!
//! - Plain: one copy while the guest runs, in large pipelined writes, hashed as it is written.
//!   Of a running guest it says which guest-physical ranges the guest wrote meanwhile (the
//!   *smear*: pages that may not be of one instant), found by one look at RAM after the copy.
//! - `pause`: the VM paused for the whole copy, resumed if it was running.
//! - `consistent`: an image of one instant with a pause of what the guest writes, as live
//!   migration does it (pre-copy): copy while the guest runs, copy again what it wrote since,
//!   until that stops shrinking; then pause, copy the last pages, resume. Where the host has
//!   soft-dirty bits the last look costs what was written; elsewhere it is one look at RAM.
//! - `update`: an existing copy brought up to date in place, at the cost of what changed.
//!
//! Every file gets a side record (`FILE.qbsnap`: its pages' fingerprints, its digest tree, the
//! smear), made from the bytes as they are written, so any capture can be updated later. A new
//! file is written beside the old one and renamed over it; an update writes in place (the
//! record is removed first, so an update cut short is rewritten whole next time).

use std::path::{Path, PathBuf};

use crate::ram::incremental::{
    record_copy, update_file_then, write_full, FullWriteError, IncrementalError, Origin, Recorded, Updated,
};
use crate::ram::{
    BridgeError, ChangeSet, HashAlgorithm, SharedMemoryBridge, Summary, TrackingMethod, Verdict,
};
use crate::vm::{Vm, VmError, VmInfo};

/// What a capture file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// The guest's RAM in RAM-file order, as the RAM file holds it (`dd` of the file).
    #[default]
    Raw,
    /// An ELF core (`ET_CORE`) as QEMU's `dump-guest-memory` writes one: a `PT_LOAD` per RAM
    /// range at its guest-physical address, the vCPUs' registers (`NT_PRSTATUS`) and the guest
    /// kernel's `VMCOREINFO` in notes. crash, drgn, Volatility and makedumpfile read it. Its
    /// header takes the first MiB; the RAM file follows it byte for byte.
    Elf,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "raw" => Ok(Format::Raw),
            "elf" => Ok(Format::Elf),
            other => Err(format!("unknown format {other:?}: raw or elf")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Elf => "elf",
        })
    }
}

/// How to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// What the file holds.
    pub format: Format,
    /// An image of one instant with a short pause: pre-copy passes while the guest runs, the
    /// last pages while it is paused (with `update`: starting from the existing file).
    pub consistent: bool,
    /// Pause the VM for the whole copy (resumed afterwards if it was running).
    pub pause: bool,
    /// Update the file in place from its side record where it can.
    pub update: bool,
    /// Find changed pages by fingerprints even where soft-dirty bits exist.
    pub fingerprints: bool,
    /// Most passes of a consistent capture while the guest runs, after the first copy (0: the
    /// default bound).
    pub attempts: u32,
    /// The digest reported.
    pub hash: HashAlgorithm,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            format: Format::Raw,
            consistent: false,
            pause: false,
            update: false,
            fingerprints: false,
            attempts: MAX_RUNNING_PASSES,
            hash: HashAlgorithm::Blake3,
        }
    }
}

/// What a capture did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Digest, verdict, passes, size: the line `snapshot` prints.
    pub summary: Summary,
    /// For an update: how the file was brought up to date (its first pass).
    pub update: Option<UpdateReport>,
    /// Pages written by each pass, the first (the whole copy, or the first update) first; for
    /// a consistent capture the last pass is the one made while the VM was paused.
    pub passes: Vec<u64>,
    /// How long this capture kept the VM paused (from before `stop` to after `cont` as seen
    /// here); `None` when it did not pause it.
    pub paused_for: Option<std::time::Duration>,
    /// For a copy of a running guest that was not paused: what the guest wrote while it was
    /// copied (a superset of the pages that may not be of one instant).
    pub smear: Option<ChangeSet>,
    /// How the passes after the first found the pages the guest wrote (soft-dirty bits or
    /// fingerprints): for a consistent capture of a running guest and an update; `None` for a
    /// single whole copy.
    pub tracking: Option<TrackingMethod>,
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

/// Most passes of a consistent capture while the guest runs, after the first copy, when
/// `attempts` does not say.
const MAX_RUNNING_PASSES: u32 = 8;

/// A pass that writes no more pages than this ends the passes while the guest runs.
const FEW_PAGES: u64 = 64;

/// Captures the RAM of `vm` (mapped as `bridge`, described by `info`) into `path`, telling
/// `progress` the bytes written so far.
///
/// # Errors
///
/// [`CaptureError`]; then `path` is as it was (or, for an update, left without a record, so
/// that the next update writes it whole), and a VM this paused runs again.
pub fn to_file(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    path: &Path,
    options: &CaptureOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Capture, CaptureError> {
    let origin = Origin::of(info.name.as_str(), info.qemu_pid, bridge.size() as u64)
        .ok_or(CaptureError::NoOrigin(info.qemu_pid))?;
    let running = vm.with_qmp(|qmp| qmp.query_status())?.running;
    if options.consistent && running {
        return consistent(vm, bridge, info, &origin, path, options, progress);
    }
    if options.update {
        return update(vm, bridge, info, &origin, path, options, running);
    }
    let header = Header::find(bridge, info, options.format)?;
    let pausing = options.pause && running;
    let paused = pausing.then(|| Pause::start(vm)).transpose()?;
    let written = whole(bridge, info, path, &header.bytes(vm, bridge, info), options, progress);
    let paused_for = paused.map(Pause::end).transpose()?;
    let (digest, recorded) = written?;
    // of a guest that ran during the copy: what it wrote meanwhile, recorded with the copy
    let smear = if running && !pausing {
        let pages = recorded.changed_pages(bridge.mapping()).map_err(|source| ram_error(info, source))?;
        Some(ChangeSet::of_pages(&pages, bridge.size(), bridge.layout()))
    } else {
        None
    };
    let ranges =
        smear.iter().flat_map(|set| set.ranges.iter().map(|range| [range.start, range.end])).collect();
    record_copy(path, &origin, recorded, ranges)?;
    let verdict = match (pausing, running) {
        (true, _) => Verdict::Paused,
        // a guest that does not run is copied as of one instant
        (false, false) => Verdict::Consistent,
        (false, true) => Verdict::Unchecked,
    };
    let pages = bridge.mapping().pages() as u64;
    Ok(Capture {
        summary: summary(options, digest, verdict, 1, bridge),
        update: None,
        passes: vec![pages],
        paused_for,
        smear,
        tracking: None,
    })
}

/// What [`consistent_into`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferCapture {
    /// Pages copied by each refresh of the buffer; for a running guest the last one is the one
    /// made while the VM was paused.
    pub passes: Vec<u64>,
    /// How long the VM was paused (from before `stop` to after `cont` as seen here); `None`
    /// when it was not running, and so was not paused.
    pub paused_for: Option<std::time::Duration>,
}

/// Brings `buffer` (a [`SnapshotBuffer`](crate::ram::incremental::SnapshotBuffer) of the VM's
/// RAM, reused from one capture to the next) to the guest's RAM at one instant, pausing a
/// running guest only for the last pages, as [`to_file`] does with `consistent`: refreshes while
/// the guest runs, for as long as what a refresh copies shrinks (after the first, at most
/// `attempts` more times, 0: the default bound), then pauses it, refreshes once more and resumes
/// it. A VM that is not
/// running is refreshed once.
///
/// # Errors
///
/// [`CaptureError`]: QEMU did not answer, or the RAM could not be read (a buffer of another
/// size among the reasons); a VM this paused runs again.
pub fn consistent_into(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    buffer: &mut crate::ram::incremental::SnapshotBuffer,
    attempts: u32,
) -> Result<BufferCapture, CaptureError> {
    let refresh = |buffer: &mut crate::ram::incremental::SnapshotBuffer| {
        buffer
            .refresh(bridge.mapping())
            .map(|pages| pages as u64)
            .map_err(|source| CaptureError::Ram { vm: vm.name().to_string(), source })
    };
    if !vm.with_qmp(|qmp| qmp.query_status())?.running {
        return Ok(BufferCapture { passes: vec![refresh(buffer)?], paused_for: None });
    }
    let first = refresh(buffer)?;
    let mut passes = while_shrinking(first, attempts, || refresh(buffer))?;
    let paused = Pause::start(vm)?;
    let last = refresh(buffer);
    let paused_for = paused.end()?;
    passes.push(last?);
    Ok(BufferCapture { passes, paused_for: Some(paused_for) })
}

/// The pages written by each pass while the guest runs: `first` (the first pass's), then `pass`
/// again while what it writes shrinks, until it writes [`FEW_PAGES`] or fewer, at most
/// `attempts` more times (0: [`MAX_RUNNING_PASSES`]; never more than 64).
fn while_shrinking<E>(
    first: u64,
    attempts: u32,
    mut pass: impl FnMut() -> Result<u64, E>,
) -> Result<Vec<u64>, E> {
    let bound = if attempts == 0 { MAX_RUNNING_PASSES } else { attempts.min(64) };
    let mut passes = vec![first];
    while (passes.len() as u32) <= bound {
        let written = pass()?;
        let shrinking = written < passes[passes.len() - 1];
        passes.push(written);
        if !shrinking || written <= FEW_PAGES {
            break;
        }
    }
    Ok(passes)
}

/// What the file holds before the RAM: nothing for a raw image; for an ELF core its header.
/// The guest kernel's vmcoreinfo is found once per capture, before any pause (a scan of RAM);
/// the vCPUs' registers are read each time a header is made, so that a header made while the
/// VM is paused holds the registers of that instant.
struct Header {
    format: Format,
    vmcoreinfo: Option<String>,
}

impl Header {
    fn find(bridge: &SharedMemoryBridge, info: &VmInfo, format: Format) -> Result<Self, CaptureError> {
        let vmcoreinfo = match format {
            Format::Raw => None,
            Format::Elf => crate::guest::vmcoreinfo::find(bridge.mapping())
                .map_err(|source| ram_error(info, source))?
                .map(|found| found.text),
        };
        Ok(Self { format, vmcoreinfo })
    }

    /// The bytes before the RAM, with the registers as they are now.
    fn bytes(&self, vm: &Vm, bridge: &SharedMemoryBridge, info: &VmInfo) -> Vec<u8> {
        if self.format == Format::Raw {
            return Vec::new();
        }
        let notes = crate::vm::vcpu_notes_now(info, |ask| vm.with_qmp(ask));
        crate::ram::dump::elf_header_over_ram(
            bridge.layout(),
            info.arch.elf_machine(),
            &notes,
            self.vmcoreinfo.as_deref(),
            crate::ram::incremental::LEAF,
        )
    }
}

fn ram_error(info: &VmInfo, source: BridgeError) -> CaptureError {
    CaptureError::Ram { vm: info.name.to_string(), source }
}

fn summary(
    options: &CaptureOptions,
    digest: String,
    verdict: Verdict,
    attempts: u32,
    bridge: &SharedMemoryBridge,
) -> Summary {
    Summary { algorithm: options.hash, digest, verdict, attempts, torn_pages: 0, size: bridge.size() as u64 }
}

/// The whole RAM written to a new file renamed over `path`, with the digest `options` asks for
/// and the record of the bytes written (its side record is the caller's to write).
fn whole(
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    path: &Path,
    prefix: &[u8],
    options: &CaptureOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(String, Recorded), CaptureError> {
    let mut outcome = None;
    // the record of the old file goes first: it no longer describes what will be at `path`
    remove_record(path)?;
    let algorithm = (options.hash != HashAlgorithm::Blake3).then_some(options.hash);
    write_atomically(path, |file| {
        let written = write_full(bridge.mapping(), file, prefix, algorithm, progress);
        match written {
            Ok(done) => {
                outcome = Some(Ok(done));
                Ok(())
            }
            Err(FullWriteError::Write(err)) => Err(err),
            Err(FullWriteError::Ram(err)) => {
                outcome = Some(Err(ram_error(info, err)));
                Err(std::io::Error::other("the RAM could not be read"))
            }
        }
    })
    .map_err(|err| match outcome.take() {
        Some(Err(ram)) => ram,
        _ => CaptureError::Write { path: path.to_path_buf(), source: err },
    })?;
    let (recorded, digest) = match outcome {
        Some(Ok(done)) => done,
        _ => unreachable!("a write that succeeded filled the outcome"),
    };
    let digest = digest.unwrap_or_else(|| recorded.digest(bridge.size() as u64));
    Ok((digest, recorded))
}

fn remove_record(path: &Path) -> Result<(), CaptureError> {
    let record = crate::ram::incremental::record_path(path);
    match std::fs::remove_file(&record) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(CaptureError::Write { path: record, source: err })
        }
        _ => Ok(()),
    }
}

/// The VM paused by a capture: resumed by [`end`](Self::end), or when dropped on an error.
struct Pause<'a> {
    vm: &'a Vm,
    since: std::time::Instant,
    resumed: bool,
}

impl<'a> Pause<'a> {
    fn start(vm: &'a Vm) -> Result<Self, CaptureError> {
        let since = std::time::Instant::now();
        vm.with_qmp(|qmp| qmp.stop())?;
        Ok(Self { vm, since, resumed: false })
    }

    /// Resumes the VM; how long it was paused.
    fn end(mut self) -> Result<std::time::Duration, CaptureError> {
        self.resumed = true;
        self.vm.with_qmp(|qmp| qmp.cont())?;
        Ok(self.since.elapsed())
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        if !self.resumed {
            if let Err(err) = self.vm.with_qmp(|qmp| qmp.cont()) {
                log::warn!("cannot resume VM {}: {}", self.vm.name(), crate::error::chain(&err));
            }
        }
    }
}

/// A consistent capture of a running guest: pre-copy passes while it runs, the last pages
/// while it is paused.
fn consistent(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    origin: &Origin,
    path: &Path,
    options: &CaptureOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Capture, CaptureError> {
    let soft_dirty = soft_dirty_unless(options.fingerprints, info, bridge);
    let pass = |prefix: &[u8], then: &mut dyn FnMut()| {
        update_file_then(bridge.mapping(), origin, path, soft_dirty.as_deref(), prefix, then)
    };
    let header = Header::find(bridge, info, options.format)?;
    let running_prefix = header.bytes(vm, bridge, info);
    let mut first_update = None;
    let first = if options.update {
        let first = pass(&running_prefix, &mut || {})?;
        let pages = first.pages_written;
        first_update = Some(first);
        pages
    } else {
        let (_, recorded) = whole(bridge, info, path, &running_prefix, options, progress)?;
        record_copy(path, origin, recorded, Vec::new())?;
        bridge.mapping().pages() as u64
    };
    let mut passes = while_shrinking(first, options.attempts, || {
        pass(&running_prefix, &mut || {}).map(|updated| updated.pages_written)
    })?;
    // the last pages, paused; resumed as soon as they are written (before the sync)
    let paused = Pause::start(vm)?;
    // the registers of the instant (read while paused) in the header
    let paused_prefix = header.bytes(vm, bridge, info);
    let mut paused = Some(paused);
    let mut paused_for = None;
    let mut resume_error = None;
    let last = pass(&paused_prefix, &mut || {
        if let Some(paused) = paused.take() {
            match paused.end() {
                Ok(duration) => paused_for = Some(duration),
                Err(err) => resume_error = Some(err),
            }
        }
    });
    drop(paused);
    if let Some(err) = resume_error {
        return Err(err);
    }
    let last = last?;
    passes.push(last.pages_written);
    let digest = match options.hash {
        HashAlgorithm::Blake3 => last.digest.clone(),
        algorithm => hash_file(path, algorithm)
            .map_err(|source| CaptureError::Write { path: path.to_path_buf(), source })?,
    };
    let update = first_update.map(|first| update_report(&first, bridge, soft_dirty.is_some()));
    Ok(Capture {
        summary: summary(options, digest, Verdict::Consistent, passes.len() as u32, bridge),
        update,
        passes,
        paused_for,
        smear: None,
        tracking: Some(method_of(soft_dirty.is_some())),
    })
}

fn update_report(first: &Updated, bridge: &SharedMemoryBridge, soft_dirty: bool) -> UpdateReport {
    UpdateReport {
        full: first.full.clone(),
        pages_written: first.pages_written,
        pages_looked: first.pages_looked,
        pages: bridge.mapping().pages(),
        method: method_of(soft_dirty),
    }
}

fn method_of(soft_dirty: bool) -> TrackingMethod {
    if soft_dirty {
        TrackingMethod::SoftDirty
    } else {
        TrackingMethod::Fingerprints
    }
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

/// `update` (not consistent): the pages that changed, written in place, paused if asked.
fn update(
    vm: &Vm,
    bridge: &SharedMemoryBridge,
    info: &VmInfo,
    origin: &Origin,
    path: &Path,
    options: &CaptureOptions,
    running: bool,
) -> Result<Capture, CaptureError> {
    let header = Header::find(bridge, info, options.format)?;
    let pausing = options.pause && running;
    let paused = pausing.then(|| Pause::start(vm)).transpose()?;
    let soft_dirty = soft_dirty_unless(options.fingerprints, info, bridge);
    let prefix = header.bytes(vm, bridge, info);
    let updated = update_file_then(bridge.mapping(), origin, path, soft_dirty.as_deref(), &prefix, || {})
        .map_err(CaptureError::from);
    let paused_for = paused.map(Pause::end).transpose()?;
    let updated = updated?;
    let verdict = match (pausing, running) {
        (true, _) => Verdict::Paused,
        (false, false) => Verdict::Consistent,
        (false, true) => Verdict::Unchecked,
    };
    let digest = match options.hash {
        HashAlgorithm::Blake3 => updated.digest.clone(),
        algorithm => hash_file(path, algorithm)
            .map_err(|source| CaptureError::Write { path: path.to_path_buf(), source })?,
    };
    Ok(Capture {
        summary: summary(options, digest, verdict, 1, bridge),
        update: Some(update_report(&updated, bridge, soft_dirty.is_some())),
        passes: vec![updated.pages_written],
        paused_for,
        smear: None,
        tracking: Some(method_of(soft_dirty.is_some())),
    })
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
