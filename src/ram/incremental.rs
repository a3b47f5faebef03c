//! Snapshots that cost what changed: a snapshot file kept up to date in place
//! ([`update_file`], `qemu-bridge snapshot --update`) and a snapshot buffer kept up to date in
//! memory ([`SnapshotBuffer`]).
//!
//! Both keep a content fingerprint (XXH3-64) of every 4 KiB page of the copy. An update looks at
//! every page of live RAM once (one read pass, holes not read: they count as pages of zeros) and
//! writes only the pages whose fingerprint moved. A snapshot file's side record
//! (`FILE.qbsnap`) says what the file was taken from (VM, QEMU process and its start time, RAM
//! size), what the file was when the record was written (size, inode, modification time), the
//! pages' fingerprints and the BLAKE3 chaining values of each MiB of the file: the digest of the
//! updated file is computed from the MiBs that changed and the tree of the others, and equals
//! what `b3sum` prints for the whole file. Anything that does not match falls back to a full
//! snapshot, and says why.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use super::guest_ram::GuestRam;
use super::soft_dirty::SoftDirty;
use super::{BridgeError, PAGE_SIZE};

/// Bytes per leaf of the digest tree kept in the side record (32 bytes of record per MiB).
pub const LEAF: u64 = 1 << 20;
/// First bytes of a side record, with its version.
const MAGIC: &[u8; 8] = b"QBSNAP1\n";
/// A side record header larger than this is not ours.
const MAX_HEADER: usize = 64 << 10;

/// The fingerprint of a page's content: a hole and a page of zeros are the same content.
fn content_print(bytes: Option<&[u8]>) -> u64 {
    static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    xxhash_rust::xxh3::xxh3_64(bytes.unwrap_or(&ZERO_PAGE))
}

/// Errors of incremental snapshots.
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    /// Live RAM could not be read.
    #[error("cannot read the RAM")]
    Ram(#[from] BridgeError),
    /// The snapshot file or its record could not be read or written.
    #[error("cannot {what} {path}")]
    File {
        /// What was being done.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn file_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IncrementalError + 'a {
    move |source| IncrementalError::File { what, path: path.to_path_buf(), source }
}

/// What a snapshot file was taken from: a VM's RAM in one QEMU process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The VM's name.
    pub vm: String,
    /// The QEMU process.
    pub qemu_pid: u32,
    /// Its start time (`/proc/PID/stat` field 22, clock ticks since boot): a pid reused by a
    /// new QEMU is another origin.
    pub qemu_start: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
}

impl Origin {
    /// The origin of a VM's RAM now, or `None` when its QEMU's start time cannot be read.
    pub fn of(vm: &str, qemu_pid: u32, ram_size: u64) -> Option<Self> {
        let qemu_start = crate::process::start_time(qemu_pid)?;
        Some(Self { vm: vm.to_string(), qemu_pid, qemu_start, ram_size })
    }
}

/// The JSON header of a side record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Header {
    origin: Origin,
    /// The snapshot file as the record saw it last: size, device, inode, modification time.
    file_len: u64,
    file_dev: u64,
    file_ino: u64,
    file_mtime_ns: i128,
    pages: u64,
    leaves: u64,
    /// The soft-dirty generation of the QEMU process when the file's pages were last looked at
    /// (read before the look): while it stays, the pages that read dirty are all that changed.
    #[serde(default)]
    soft_dirty_generation: Option<u64>,
    /// The guest-physical ranges `[start, end)` the guest wrote while the file was copied
    /// whole from a running guest (a superset of the pages that may not be of one instant);
    /// empty when the copy was of one instant or updated since.
    #[serde(default)]
    smear: Vec<[u64; 2]>,
    /// Bytes before the RAM in the file (an ELF core's header: a multiple of 1 MiB); 0 for a
    /// raw image.
    #[serde(default)]
    base: u64,
}

/// A snapshot file's side record: where it came from, its pages' fingerprints, its digest tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    header: Header,
    prints: Vec<u64>,
    tree: Vec<ChainingValue>,
}

/// Which pages a look covers.
#[derive(Debug)]
enum Selection {
    All,
    /// Only these (ascending): the soft-dirty bits say no other changed.
    Dirty(Vec<usize>),
}

/// Which pages of RAM to look at, given the soft-dirty generation the copy is exact for
/// (`known`), and the generation to remember for the next look. With no source, or a
/// generation that moved, every page; when every page is looked at anyway (or more than half of
/// them read dirty) and the bits were not cleared just now, they are cleared first, so that the
/// next look costs what changes. A source that fails means every page, with a warning.
fn select_pages(source: Option<&SoftDirty>, known: Option<u64>) -> (Selection, Option<u64>) {
    let Some(source) = source else { return (Selection::All, None) };
    let mut dirty = Vec::new();
    let looked = source.dirty_pages(0..source.pages(), &mut dirty).and_then(|generation| {
        let exact = known.is_some_and(|known| known == generation.count && known > 0);
        // more than half of RAM read dirty: clearing now and looking at every page costs at most
        // twice this look, and makes the next ones cheap
        if exact && !(dirty.len() * 2 > source.pages() && generation.may_clear()) {
            return Ok((Selection::Dirty(dirty), Some(generation.count)));
        }
        let generation = if generation.may_clear() { source.clear()? } else { generation };
        Ok((Selection::All, Some(generation.count)))
    });
    looked.unwrap_or_else(|err| {
        log::warn!("{}: looking at every page", crate::error::chain(&err));
        (Selection::All, None)
    })
}

/// Calls `each(page, bytes)` for the pages of `selection` in `ram`, ascending; returns how many.
fn for_each_selected(
    ram: &GuestRam,
    selection: &Selection,
    mut each: impl FnMut(usize, Option<&[u8]>),
) -> Result<u64, BridgeError> {
    match selection {
        Selection::All => ram.for_each_page(each).map(|()| ram.pages() as u64),
        Selection::Dirty(pages) => {
            for run in super::tracker::runs(pages) {
                ram.for_each_page_in(run, &mut each)?;
            }
            Ok(pages.len() as u64)
        }
    }
}

/// Where the side record of snapshot `path` lives.
pub fn record_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".qbsnap");
    PathBuf::from(name)
}

fn file_identity(file: &File) -> std::io::Result<(u64, u64, u64, i128)> {
    let meta = file.metadata()?;
    Ok((
        meta.len(),
        meta.dev(),
        meta.ino(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    ))
}

/// The most bytes a record of `ram_size` bytes of RAM after `base` bytes of header can hold: a
/// larger file is not such a record, and is not read whole to find out.
fn record_len_bound(ram_size: u64, base: u64) -> u64 {
    let pages = ram_size.div_ceil(PAGE_SIZE as u64);
    let leaves = ram_size.saturating_add(base).div_ceil(LEAF);
    (MAGIC.len() + 4 + MAX_HEADER) as u64 + pages.saturating_mul(8) + leaves.saturating_mul(32)
}

/// The file at `path`, or its first `limit + 1` bytes when it is longer (which no parser then
/// accepts).
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// For the cargo-fuzz target only (built with `--cfg fuzzing`): parses a side record from
/// arbitrary bytes and checks what an accepted one promises.
#[cfg(fuzzing)]
pub fn fuzz_record(bytes: &[u8]) {
    if let Some(record) = Record::parse(bytes) {
        record.check_parsed(bytes);
    }
}

impl Record {
    /// What a record accepted by [`parse`](Self::parse) from `bytes` promises: one fingerprint
    /// a page and one chaining value a leaf of its RAM, a header within bounds, and the same
    /// record again when written and parsed back.
    #[cfg(any(test, fuzzing))]
    fn check_parsed(&self, bytes: &[u8]) {
        let header = &self.header;
        assert_eq!(self.prints.len() as u64, header.pages);
        assert_eq!(self.tree.len() as u64, header.leaves);
        assert_eq!(header.pages, header.origin.ram_size.div_ceil(PAGE_SIZE as u64));
        assert_eq!(header.base % LEAF, 0);
        assert!(bytes.len() as u64 <= record_len_bound(header.origin.ram_size, header.base));
        assert_eq!(Record::parse(&self.to_bytes()).as_ref(), Some(self));
    }

    /// Parses a record; `None` for anything malformed (a record is a cache: a bad one means a
    /// full snapshot, never an error).
    fn parse(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let header_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        if header_len > MAX_HEADER {
            return None;
        }
        let header: Header = serde_json::from_slice(rest.get(4..4 + header_len)?).ok()?;
        let body = &rest[4 + header_len..];
        let pages = usize::try_from(header.pages).ok()?;
        let leaves = usize::try_from(header.leaves).ok()?;
        if header.pages != header.origin.ram_size.div_ceil(PAGE_SIZE as u64)
            || header.base % LEAF != 0
            || header.leaves != header.origin.ram_size.checked_add(header.base)?.div_ceil(LEAF)
            || body.len() != pages.checked_mul(8)?.checked_add(leaves.checked_mul(32)?)?
        {
            return None;
        }
        let (prints, tree) = body.split_at(pages * 8);
        let prints = prints
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
            .collect();
        let tree = tree.chunks_exact(32).map(|cv| cv.try_into().unwrap_or_default()).collect();
        Some(Self { header, prints, tree })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = Vec::with_capacity(12 + header.len() + self.prints.len() * 8 + self.tree.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for print in &self.prints {
            out.extend_from_slice(&print.to_le_bytes());
        }
        for cv in &self.tree {
            out.extend_from_slice(cv);
        }
        out
    }
}

/// The chaining value of the leaf at `offset` of a `total`-byte input, whose bytes are `bytes`.
fn leaf_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// The BLAKE3 digest of a `total`-byte input whose 1 MiB leaves have chaining values `tree`
/// (`total` > 1 MiB: smaller inputs are hashed whole).
fn root_of(tree: &[ChainingValue], total: u64) -> blake3::Hash {
    fn subtree(tree: &[ChainingValue], start: u64, len: u64) -> ChainingValue {
        if len <= LEAF {
            return tree[(start / LEAF) as usize];
        }
        let left = left_subtree_len(len);
        merge_subtrees_non_root(
            &subtree(tree, start, left),
            &subtree(tree, start + left, len - left),
            Mode::Hash,
        )
    }
    let left = left_subtree_len(total);
    merge_subtrees_root(&subtree(tree, 0, left), &subtree(tree, left, total - left), Mode::Hash)
}

/// Reads `len` bytes of `file` at `offset` (holes and past-the-end as zeros).
fn read_file(file: &File, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64)? {
            0 => {
                buffer[done..].fill(0);
                break;
            }
            read => done += read,
        }
    }
    Ok(())
}

/// The digest tree and the BLAKE3 digest of the leaves `dirty` of `file` (all of them when
/// `tree` is empty), reading only those leaves.
fn digest(file: &File, total: u64, tree: &mut Vec<ChainingValue>, dirty: &[u64]) -> std::io::Result<String> {
    let leaves = total.div_ceil(LEAF);
    let mut buffer = vec![0u8; LEAF as usize];
    if total <= LEAF {
        let bytes = &mut buffer[..total as usize];
        read_file(file, 0, bytes)?;
        *tree = vec![blake3::hash(bytes).into()];
        return Ok(blake3::hash(bytes).to_hex().to_string());
    }
    let all: Vec<u64>;
    let dirty = if tree.len() as u64 != leaves {
        *tree = vec![[0; 32]; leaves as usize];
        all = (0..leaves).collect();
        &all
    } else {
        dirty
    };
    for &leaf in dirty {
        let offset = leaf * LEAF;
        let bytes = &mut buffer[..(total - offset).min(LEAF) as usize];
        read_file(file, offset, bytes)?;
        tree[leaf as usize] = leaf_cv(offset, bytes);
    }
    Ok(root_of(tree, total).to_hex().to_string())
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// `None` when the file was updated in place; else why it was written whole.
    pub full: Option<String>,
    /// Pages written (all of them for a full snapshot).
    pub pages_written: u64,
    /// Pages looked at: all of them, or where soft-dirty bits are read, those QEMU wrote since
    /// the last update.
    pub pages_looked: u64,
    /// BLAKE3 hex digest of the file now (what `b3sum` prints).
    pub digest: String,
}

/// Why the record of `path` cannot serve an update from `origin`, or the record.
fn usable_record(path: &Path, file: Option<&File>, origin: &Origin, base: u64) -> Result<Record, String> {
    let record_file = record_path(path);
    let Some(file) = file else { return Err(format!("{} does not exist", path.display())) };
    let bytes = read_bounded(&record_file, record_len_bound(origin.ram_size, base))
        .map_err(|_| format!("{} has no record ({})", path.display(), record_file.display()))?;
    let record =
        Record::parse(&bytes).ok_or_else(|| format!("{} is not a snapshot record", record_file.display()))?;
    if record.header.origin != *origin {
        return Err(format!(
            "{} was taken from {} (QEMU pid {}, {} bytes), not from this VM's QEMU",
            path.display(),
            record.header.origin.vm,
            record.header.origin.qemu_pid,
            record.header.origin.ram_size
        ));
    }
    if record.header.base != base {
        return Err(format!(
            "{} is of another format (its RAM starts at {})",
            path.display(),
            record.header.base
        ));
    }
    let (len, dev, ino, mtime) =
        file_identity(file).map_err(|err| format!("cannot stat {}: {err}", path.display()))?;
    let header = &record.header;
    if (len, dev, ino, mtime) != (header.file_len, header.file_dev, header.file_ino, header.file_mtime_ns) {
        return Err(format!("{} changed since its record was written", path.display()));
    }
    Ok(record)
}

/// Writes the record of `file` (at `path`) atomically: `recorded`, the soft-dirty generation
/// its pages were looked at in, and the smear of its copy.
fn write_record(
    path: &Path,
    file: &File,
    origin: &Origin,
    recorded: Recorded,
    soft_dirty_generation: Option<u64>,
    smear: Vec<[u64; 2]>,
) -> Result<(), IncrementalError> {
    let Recorded { prints, tree, base } = recorded;
    let (file_len, file_dev, file_ino, file_mtime_ns) =
        file_identity(file).map_err(file_error("stat", path))?;
    let header = Header {
        origin: origin.clone(),
        file_len,
        file_dev,
        file_ino,
        file_mtime_ns,
        pages: prints.len() as u64,
        leaves: tree.len() as u64,
        soft_dirty_generation,
        smear,
        base,
    };
    let record = Record { header, prints, tree };
    let target = record_path(path);
    let temporary = target.with_extension(format!("qbsnap.partial-{}", std::process::id()));
    let written =
        std::fs::write(&temporary, record.to_bytes()).and_then(|()| std::fs::rename(&temporary, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(file_error("write the record", &target))
}

/// Updates snapshot file `path` of `ram` (taken from `origin`) in place: only the pages whose
/// content changed since the file was written are written, when its side record matches;
/// otherwise the file is written whole to a new file renamed over it at the end, so the old one
/// stays whole until then (`Updated::full` says why). The record is removed before the file is
/// touched and written anew after, so an in-place update cut short leaves a file the next update
/// rewrites whole. The caller pauses the VM around the call for an exact
/// image; otherwise each page is as it was when it was looked at.
///
/// # Errors
///
/// [`IncrementalError`] when RAM, the file or the record cannot be read or written.
#[cfg(test)]
pub fn update_file(
    ram: &GuestRam,
    origin: &Origin,
    path: &Path,
    soft_dirty: Option<&SoftDirty>,
) -> Result<Updated, IncrementalError> {
    update_file_then(ram, origin, path, soft_dirty, &[], || {})
}

/// [`update_file`] of a file that holds `prefix` before the RAM (an ELF core's header; its
/// length a multiple of 1 MiB, rewritten at every update), calling `pages_done` once every page
/// is looked at and written, before the file is synced and its digest and record are made: a
/// caller that paused the VM for the update resumes it there, so that the guest stops only for
/// the pages.
///
/// # Errors
///
/// As [`update_file`].
pub fn update_file_then(
    ram: &GuestRam,
    origin: &Origin,
    path: &Path,
    soft_dirty: Option<&SoftDirty>,
    prefix: &[u8],
    pages_done: impl FnOnce(),
) -> Result<Updated, IncrementalError> {
    let base = prefix.len() as u64;
    if base % LEAF != 0 {
        return Err(file_error("write", path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a prefix that is not whole MiBs",
        )));
    }
    let started = std::time::Instant::now();
    let existing = std::fs::OpenOptions::new().read(true).write(true).open(path).ok();
    let record = usable_record(path, existing.as_ref(), origin, base);
    let record_read = started.elapsed();
    // from here on, the file no longer matches a record until the new one is written
    match std::fs::remove_file(record_path(path)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(file_error("remove the record", &record_path(path))(err));
        }
        _ => {}
    }
    let total = base + ram.len() as u64;
    let mut temporary = None;
    let known = record.as_ref().ok().and_then(|record| record.header.soft_dirty_generation);
    let (selection, generation) = select_pages(soft_dirty, known);
    let selected = started.elapsed();
    let (file, mut prints, mut tree) = match (existing, record) {
        (Some(file), Ok(record)) => (file, record.prints, record.tree),
        (_, Err(reason)) => {
            // written whole beside the old file, which stays whole until the rename: a new file of
            // holes, where pages of zeros need no write
            let name = path.file_name().ok_or_else(|| {
                file_error("write", path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a file name",
                ))
            })?;
            let partial =
                path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(file_error("create", &partial))?;
            let partial = temporary.insert(Partial(partial));
            // copied in large writes, its record made from the very bytes written
            let (recorded, _) = write_full(ram, &file, prefix, None, &|_| {}).map_err(|err| match err {
                FullWriteError::Ram(err) => IncrementalError::Ram(err),
                FullWriteError::Write(err) => file_error("write", &partial.0)(err),
            })?;
            pages_done();
            file.sync_all().map_err(file_error("sync", path))?;
            let digest = recorded.digest(total);
            std::fs::rename(&partial.0, path).map_err(file_error("rename into place", path))?;
            std::mem::forget(temporary.take());
            write_record(path, &file, origin, recorded, generation, Vec::new())?;
            let pages = ram.pages() as u64;
            return Ok(Updated { full: Some(reason), pages_written: pages, pages_looked: pages, digest });
        }
        (None, Ok(_)) => unreachable!("a record is usable only with its file"),
    };
    // the prefix (an ELF header: registers and notes of now) is written again every time
    let mut dirty_leaves: Vec<u64> = (0..base / LEAF).collect();
    if !prefix.is_empty() {
        file.write_all_at(prefix, 0).map_err(file_error("write", path))?;
    }
    let mut pages_written = 0u64;
    let mut failure = None;
    let pages_looked = for_each_selected(ram, &selection, |page, bytes| {
        if failure.is_some() {
            return;
        }
        let print = content_print(bytes);
        if prints[page] == print {
            return;
        }
        let offset = base + (page * PAGE_SIZE) as u64;
        let written = match bytes {
            Some(bytes) if bytes.iter().any(|&byte| byte != 0) => file.write_all_at(bytes, offset),
            // zeros stay (or become) a hole of the file
            _ => nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                PAGE_SIZE.min(ram.len() - page * PAGE_SIZE) as i64,
            )
            .map(drop)
            .map_err(std::io::Error::from),
        };
        if let Err(err) = written {
            failure = Some(err);
            return;
        }
        prints[page] = print;
        pages_written += 1;
        let leaf = offset / LEAF;
        if dirty_leaves.last() != Some(&leaf) {
            dirty_leaves.push(leaf);
        }
    })?;
    // where the time of a pass goes (a paused pass stops the guest for all of it)
    log::debug!(
        "update of {}: record read in {record_read:?}, pages selected by {} by {selected:?}, \
         {pages_looked} looked at and {pages_written} written by {:?}",
        path.display(),
        if soft_dirty.is_some() { "soft-dirty bits" } else { "fingerprints" },
        started.elapsed()
    );
    pages_done();
    if let Some(err) = failure {
        return Err(file_error("write", path)(err));
    }
    file.sync_all().map_err(file_error("sync", path))?;
    let digest = digest(&file, total, &mut tree, &dirty_leaves).map_err(file_error("read back", path))?;
    write_record(path, &file, origin, Recorded { prints, tree, base }, generation, Vec::new())?;
    Ok(Updated { full: None, pages_written, pages_looked, digest })
}

/// What writing a whole copy failed at.
#[derive(Debug)]
pub enum FullWriteError {
    /// Reading RAM.
    Ram(BridgeError),
    /// Writing the file.
    Write(std::io::Error),
}

/// Writes `prefix` (whole MiBs) and then all of `ram` into `file` from its start (sparse: zero
/// pages stay holes), in large
/// pipelined writes ([`write_hashed_tapped`](super::snapshot::write_hashed_tapped)), and
/// returns the record of exactly the bytes written: each page's fingerprint and each MiB's
/// BLAKE3 chaining value, made on the hashing thread as the copy goes (no read back), and the
/// digest of `algorithm` if one is named (BLAKE3's comes from the record:
/// [`Recorded::digest`]). `progress` is told the bytes written so far.
///
/// # Errors
///
/// [`FullWriteError`].
pub fn write_full(
    ram: &GuestRam,
    file: &File,
    prefix: &[u8],
    algorithm: Option<super::HashAlgorithm>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Recorded, Option<String>), FullWriteError> {
    let mut recorder = Recorder::new(prefix.len() as u64, ram.len() as u64);
    let digest =
        super::snapshot::write_hashed_tapped(ram, file, prefix, algorithm, progress, &mut |offset, bytes| {
            recorder.add(offset, bytes)
        })
        .map_err(|err| match err {
            BridgeError::Write(err) => FullWriteError::Write(err),
            err => FullWriteError::Ram(err),
        })?;
    Ok((recorder.finish(), digest))
}

/// The record of a copy made as it is written: page fingerprints, and the chaining value of
/// each MiB leaf (of the root hash, for a copy of one leaf or less).
struct Recorder {
    /// Bytes before the RAM: in the digest tree, not fingerprinted.
    base: u64,
    total: u64,
    prints: Vec<u64>,
    tree: Vec<ChainingValue>,
    leaf: blake3::Hasher,
    /// Bytes of the current leaf hashed so far.
    in_leaf: u64,
    /// A page split between two chunks, until it is whole.
    page: Vec<u8>,
}

impl Recorder {
    fn new(base: u64, ram: u64) -> Self {
        let total = base + ram;
        Self {
            base,
            total,
            prints: Vec::with_capacity(ram.div_ceil(PAGE_SIZE as u64) as usize),
            tree: Vec::with_capacity(total.div_ceil(LEAF) as usize),
            leaf: blake3::Hasher::new(),
            in_leaf: 0,
            page: Vec::new(),
        }
    }

    /// The next `bytes` of the copy (chunks come in order, from offset 0).
    fn add(&mut self, offset: u64, mut bytes: &[u8]) {
        debug_assert_eq!(offset, self.tree.len() as u64 * LEAF + self.in_leaf);
        // fingerprints of the RAM, page by page (a chunk need not end on a page)
        let skip = self.base.saturating_sub(offset).min(bytes.len() as u64) as usize;
        let mut rest = &bytes[skip..];
        if !self.page.is_empty() {
            let take = (PAGE_SIZE - self.page.len()).min(rest.len());
            self.page.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.page.len() == PAGE_SIZE {
                self.prints.push(content_print(Some(&self.page)));
                self.page.clear();
            }
        }
        let whole = rest.len() / PAGE_SIZE * PAGE_SIZE;
        self.prints.extend(rest[..whole].chunks_exact(PAGE_SIZE).map(|page| content_print(Some(page))));
        self.page.extend_from_slice(&rest[whole..]);
        // the digest tree, leaf by leaf
        while !bytes.is_empty() {
            let take = ((LEAF - self.in_leaf) as usize).min(bytes.len());
            self.leaf.update(&bytes[..take]);
            self.in_leaf += take as u64;
            bytes = &bytes[take..];
            if self.in_leaf == LEAF && self.total > LEAF {
                self.close_leaf();
            }
        }
    }

    fn close_leaf(&mut self) {
        self.tree.push(self.leaf.finalize_non_root());
        self.in_leaf = 0;
        self.leaf = blake3::Hasher::new();
        self.leaf.set_input_offset(self.tree.len() as u64 * LEAF);
    }

    fn finish(mut self) -> Recorded {
        if !self.page.is_empty() {
            // the last page, short: fingerprinted as it is in the file, padded as RAM is
            self.page.resize(PAGE_SIZE, 0);
            self.prints.push(content_print(Some(&self.page)));
        }
        if self.total <= LEAF {
            self.tree = vec![self.leaf.finalize().into()];
        } else if self.in_leaf > 0 {
            self.close_leaf();
        }
        Recorded { prints: self.prints, tree: self.tree, base: self.base }
    }
}

/// The record of a whole copy ([`write_full`]): what its side record keeps.
#[derive(Debug, Clone)]
pub struct Recorded {
    prints: Vec<u64>,
    tree: Vec<ChainingValue>,
    /// Bytes before the RAM in the file.
    base: u64,
}

impl Recorded {
    /// The BLAKE3 digest of the file of a copy of `ram` bytes (what `b3sum` prints).
    pub fn digest(&self, ram: u64) -> String {
        let total = self.base + ram;
        match self.tree.as_slice() {
            [] => blake3::hash(&[]).to_hex().to_string(),
            [root] if total <= LEAF => blake3::Hash::from_bytes(*root).to_hex().to_string(),
            tree => root_of(tree, total).to_hex().to_string(),
        }
    }

    /// The pages of `ram` whose content differs now from the copy's (one read pass): those the
    /// guest wrote since they were copied.
    ///
    /// # Errors
    ///
    /// As the read ([`BridgeError::FileShrunk`]).
    pub fn changed_pages(&self, ram: &GuestRam) -> Result<Vec<usize>, BridgeError> {
        let mut changed = Vec::new();
        ram.for_each_page(|page, bytes| {
            if self.prints.get(page) != Some(&content_print(bytes)) {
                changed.push(page);
            }
        })?;
        Ok(changed)
    }
}

/// Writes the side record of the copy `recorded` now at `path`, taken from `origin`, with the
/// guest-physical ranges `smear` the guest wrote during the copy: a later [`update_file`] of
/// `path` then writes only what changed.
///
/// # Errors
///
/// The file or the record cannot be read or written.
pub fn record_copy(
    path: &Path,
    origin: &Origin,
    recorded: Recorded,
    smear: Vec<[u64; 2]>,
) -> Result<(), IncrementalError> {
    let file = File::open(path).map_err(file_error("open", path))?;
    write_record(path, &file, origin, recorded, None, smear)
}

/// A file being written whole, removed unless it was renamed into place.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A copy of a VM's RAM in memory kept up to date at the cost of what changed: each
/// [`refresh`](Self::refresh) looks at every page once (with soft-dirty bits: at the pages QEMU
/// wrote) and copies only the pages whose content moved (the library's `snapshot --update`, for callers that take many snapshots a second).
#[derive(Debug)]
pub struct SnapshotBuffer {
    data: Vec<u8>,
    prints: Vec<u64>,
    /// Soft-dirty bits to look at instead of every page, and the generation the copy is exact
    /// for.
    soft_dirty: Option<(Arc<SoftDirty>, Option<u64>)>,
}

impl SnapshotBuffer {
    /// A buffer for `ram`, filled now (holes are zeros, and stay unallocated in the buffer).
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`]).
    pub fn new(ram: &GuestRam) -> Result<Self, BridgeError> {
        Self::filled(ram, None)
    }

    /// As [`new`](Self::new), then each [`refresh`](Self::refresh) looks only at the pages
    /// `source`'s soft-dirty bits say QEMU wrote (see [`crate::ram::tracker::soft_dirty_for`]).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_soft_dirty(ram: &GuestRam, source: Arc<SoftDirty>) -> Result<Self, BridgeError> {
        Self::filled(ram, Some(source))
    }

    fn filled(ram: &GuestRam, source: Option<Arc<SoftDirty>>) -> Result<Self, BridgeError> {
        let mut buffer = Self {
            data: vec![0; ram.len()],
            prints: vec![content_print(None); ram.pages()],
            soft_dirty: source.map(|source| (source, None)),
        };
        buffer.refresh(ram)?;
        Ok(buffer)
    }

    /// The copy, in RAM-file order.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Brings the copy up to date; returns the pages copied.
    ///
    /// # Errors
    ///
    /// [`BridgeError::BufferLength`] for RAM of another size; as the copy.
    pub fn refresh(&mut self, ram: &GuestRam) -> Result<usize, BridgeError> {
        if ram.len() != self.data.len() {
            return Err(BridgeError::BufferLength { expected: self.data.len(), actual: ram.len() });
        }
        let (selection, generation) = match &self.soft_dirty {
            Some((source, known)) => select_pages(Some(source), *known),
            None => (Selection::All, None),
        };
        let (data, prints) = (&mut self.data, &mut self.prints);
        let mut copied = 0;
        for_each_selected(ram, &selection, |page, bytes| {
            let print = content_print(bytes);
            if prints[page] != print {
                prints[page] = print;
                let start = page * PAGE_SIZE;
                let end = (start + PAGE_SIZE).min(data.len());
                match bytes {
                    Some(bytes) => data[start..end].copy_from_slice(bytes),
                    None => data[start..end].fill(0),
                }
                copied += 1;
            }
        })?;
        if let Some((_, known)) = &mut self.soft_dirty {
            *known = generation;
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::Mapping;

    fn ram_file(len: usize) -> (tempfile::NamedTempFile, GuestRam) {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len(len as u64).unwrap();
        let ram = GuestRam::from(Mapping::open(file.path()).unwrap());
        (file, ram)
    }

    /// The record made as chunks go by equals the one made from the whole: every page's
    /// fingerprint and the digest, for sizes below, at and above one leaf, chunks of any size.
    #[test]
    fn recorder_equals_the_record_of_the_whole() {
        for total in [1usize, 4095, 4096, 5000, LEAF as usize, LEAF as usize + 1, 3 * LEAF as usize + 12345] {
            let bytes: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4096) as u8).collect();
            for chunk in [1000, 4096, 512 << 10, 1 << 20] {
                let mut recorder = Recorder::new(0, total as u64);
                for (index, part) in bytes.chunks(chunk).enumerate() {
                    recorder.add((index * chunk) as u64, part);
                }
                let recorded = recorder.finish();
                assert_eq!(
                    recorded.digest(total as u64),
                    blake3::hash(&bytes).to_hex().to_string(),
                    "{total} by {chunk}"
                );
                let prints: Vec<u64> = bytes
                    .chunks(PAGE_SIZE)
                    .map(|page| {
                        let mut page = page.to_vec();
                        page.resize(PAGE_SIZE, 0);
                        content_print(Some(&page))
                    })
                    .collect();
                assert_eq!(recorded.prints, prints, "{total} by {chunk}");
            }
        }
    }

    fn b3sum(path: &Path) -> String {
        blake3::hash(&std::fs::read(path).unwrap()).to_hex().to_string()
    }

    #[test]
    fn the_digest_tree_gives_blake3_of_the_whole_for_every_shape() {
        for total in [LEAF + 1, 2 * LEAF, 3 * LEAF + 4096, 7 * LEAF, 8 * LEAF, 9 * LEAF - 4096] {
            let bytes: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            let mut tree = Vec::new();
            assert_eq!(
                digest(&file, total, &mut tree, &[]).unwrap(),
                blake3::hash(&bytes).to_hex().to_string(),
                "{total}"
            );
        }
    }

    #[test]
    fn updates_write_what_changed_and_keep_b3sum_digests() {
        let len = 3 * LEAF as usize + 8 * PAGE_SIZE;
        let (ram_file, ram) = ram_file(len);
        ram_file.as_file().write_all_at(&[7u8; 3 * PAGE_SIZE], 5 * PAGE_SIZE as u64).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let origin = Origin { vm: "vm".into(), qemu_pid: 1, qemu_start: 2, ram_size: len as u64 };

        let first = update_file(&ram, &origin, &path, None).unwrap();
        assert!(first.full.as_deref().is_some_and(|why| why.contains("does not exist")), "{first:?}");
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(ram_file.path()).unwrap());
        assert_eq!(first.digest, b3sum(&path));
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 3 * PAGE_SIZE as u64, "holes stay holes");

        // nothing changed: nothing written, same digest
        let same = update_file(&ram, &origin, &path, None).unwrap();
        assert_eq!((same.full.as_ref(), same.pages_written), (None, 0));
        assert_eq!(same.digest, first.digest);

        // two pages in two leaves change, one page becomes zeros
        ram_file.as_file().write_all_at(&[1], 2 * LEAF + 10).unwrap();
        ram_file.as_file().write_all_at(&[2], 100).unwrap();
        ram_file.as_file().write_all_at(&[0u8; PAGE_SIZE], 6 * PAGE_SIZE as u64).unwrap();
        let updated = update_file(&ram, &origin, &path, None).unwrap();
        assert_eq!((updated.full.as_ref(), updated.pages_written), (None, 3));
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(ram_file.path()).unwrap());
        assert_eq!(updated.digest, b3sum(&path));

        // another origin, or a file someone else changed: written whole, and said why
        let other = Origin { qemu_pid: 99, ..origin.clone() };
        let whole = update_file(&ram, &other, &path, None).unwrap();
        assert!(whole.full.as_deref().is_some_and(|why| why.contains("not from this VM")), "{whole:?}");
        // file times are coarse (a clock tick): let one pass before the foreign write
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[9], 0).unwrap();
        let touched = update_file(&ram, &other, &path, None).unwrap();
        assert!(touched.full.as_deref().is_some_and(|why| why.contains("changed since")), "{touched:?}");
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(ram_file.path()).unwrap());
        // a record that is not one
        std::fs::write(record_path(&path), b"QBSNAP1\n\xff\xff\xff\xff").unwrap();
        let garbage = update_file(&ram, &other, &path, None).unwrap();
        assert!(
            garbage.full.as_deref().is_some_and(|why| why.contains("not a snapshot record")),
            "{garbage:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(ram_file.path()).unwrap());
        // whole writes went to a file beside it, renamed into place: nothing else is left
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["snap", "snap.qbsnap"]);
    }

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let origin = Origin { vm: "vm".into(), qemu_pid: 1, qemu_start: 2, ram_size: LEAF + 4096 };
        let header = Header {
            origin,
            file_len: 1,
            file_dev: 2,
            file_ino: 3,
            file_mtime_ns: 4,
            pages: 257,
            leaves: 2,
            soft_dirty_generation: Some(7),
            smear: vec![[0x1000, 0x3000]],
            base: 0,
        };
        let record = Record { header, prints: (0..257).collect(), tree: vec![[1; 32], [2; 32]] };
        let bytes = record.to_bytes();
        assert_eq!(Record::parse(&bytes), Some(record));
        for cut in [0, 7, 12, bytes.len() - 1] {
            assert_eq!(Record::parse(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::parse(&huge), None);
    }

    /// A tampered record (bits flipped, bytes cut, inserted or overwritten, in the header or the
    /// body) is refused or parses into a record that keeps every promise: never a panic.
    #[test]
    fn tampered_records_are_refused_or_keep_their_promises() {
        let origin = Origin { vm: "vm".into(), qemu_pid: 1, qemu_start: 2, ram_size: 3 * LEAF };
        let header = Header {
            origin,
            file_len: 5,
            file_dev: 6,
            file_ino: 7,
            file_mtime_ns: -8,
            pages: 768,
            leaves: 4,
            soft_dirty_generation: None,
            smear: vec![[0, 4096]],
            base: LEAF,
        };
        let record = Record { header, prints: (0..768).collect(), tree: vec![[9; 32]; 4] };
        let valid = record.to_bytes();
        record.check_parsed(&valid);
        // xorshift: the same mutations on every run
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound.max(1) as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..=next(3) {
                // most mutations in the header, where the parser's decisions are
                let at = if next(4) == 0 { next(bytes.len()) } else { next(bytes.len().min(400)) };
                match next(5) {
                    0 => bytes[at] ^= 1 << next(8),
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, next(256) as u8),
                    3 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ if at < bytes.len() => bytes[at] = b"0123456789{}[]\",:-e"[next(19)],
                    _ => {}
                }
                if bytes.is_empty() {
                    break;
                }
            }
            match Record::parse(&bytes) {
                Some(parsed) => {
                    parsed.check_parsed(&bytes);
                    accepted += 1;
                }
                None => refused += 1,
            }
        }
        // the mutations reach both outcomes: a test that only ever refused would test little
        assert!(accepted > 100 && refused > 100, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn an_oversized_record_file_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap().len(), 101);
        assert_eq!(read_bounded(&path, 20_000).unwrap().len(), 10_000);
        assert!(record_len_bound(4 << 30, LEAF) < (9 << 20));
    }

    #[test]
    fn a_snapshot_buffer_copies_only_what_changed() {
        let (file, ram) = ram_file(64 * PAGE_SIZE);
        file.as_file().write_all_at(&[3u8; PAGE_SIZE], 2 * PAGE_SIZE as u64).unwrap();
        let mut buffer = SnapshotBuffer::new(&ram).unwrap();
        assert_eq!(buffer.data(), std::fs::read(file.path()).unwrap());
        assert_eq!(buffer.refresh(&ram).unwrap(), 0);
        file.as_file().write_all_at(&[4], 40 * PAGE_SIZE as u64 + 1).unwrap();
        assert_eq!(buffer.refresh(&ram).unwrap(), 1);
        assert_eq!(buffer.data(), std::fs::read(file.path()).unwrap());
    }
}
