//! Which pages the QEMU process wrote, as the host kernel tracks them: Linux's soft-dirty bits.
//!
//! Writing `4` to `/proc/PID/clear_refs` clears the soft-dirty bit of every page of the process
//! (and write-protects them); bit 55 of each 8-byte entry of `/proc/PID/pagemap` says whether
//! the page was written since. A write by QEMU's process sets it: the guest's vCPUs (TCG, and
//! KVM, which takes a write fault on the protected page), QEMU's devices, vhost kernel threads.
//! A write into the RAM file by *another* process (a vhost-user back end, a debugger, `dd`) does
//! not: trackers keep a slow fingerprint sweep for those (see [`crate::ram::tracker`]).
//! Hosts built without `CONFIG_MEM_SOFT_DIRTY` (and all arm64 hosts) never set the bit:
//! [`host_has_soft_dirty`] finds out once, from a page of this process's own.
//!
//! `clear_refs` is process-wide, and a clear loses the bits of every other reader: a page that
//! was clean when one reader read its entry and written before the clear is dirty nowhere after
//! it (there is no atomic read-and-clear; `PAGEMAP_SCAN`'s write-protect mode is userfaultfd's,
//! not soft-dirty's). So every clear goes through one **record per QEMU process**, a small file
//! in `/dev/shm` (`qemu-bridge-soft-dirty-PID-START`) holding a generation count: a clear takes
//! the record's lock exclusively, clears and counts one up; a read takes it shared, reads the
//! generation and the entries together. A reader that sees another generation than last time
//! knows its bits do not cover the interval and looks at every page once (by fingerprint) before
//! it trusts the bits again. Two consumers of one VM (the view, `changes`, `snapshot --update`, in
//! one process or several) thus never miss a write because of each other. No record means
//! nobody of ours ever cleared: every page then reads as dirty (a new mapping is all soft-dirty),
//! which is a superset too. Another program clearing the process's bits behind the record's back
//! (CRIU does) is not seen.
//!
//! Cost to the guest: after a clear, the first write to each page takes one minor fault (about a
//! microsecond under KVM); trackers clear only when re-hashing the pages that read dirty has
//! cost them as much as the sweep a clear costs, and at most every [`MIN_CLEAR_INTERVAL`].
//!
//! hugetlbfs RAM is not tracked this way (its pages' soft-dirty bits are not cleared by
//! `clear_refs` on every kernel).

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::guest_ram::GuestRam;
use super::mapping::ReadMethod;
use super::PAGE_SIZE;

/// Bit 55 of a pagemap entry: the page was written since the last clear.
const SOFT_DIRTY: u64 = 1 << 55;
/// Where the per-process records live.
const RECORD_DIR: &str = "/dev/shm";
/// Prefix of a record's file name.
const RECORD_PREFIX: &str = "qemu-bridge-soft-dirty-";
/// Two clears of one QEMU process are at least this far apart (each costs every tracker of it a
/// full fingerprint sweep, and the guest a fault per page it writes next).
pub const MIN_CLEAR_INTERVAL: Duration = Duration::from_secs(2);

/// Why a VM's pages cannot be tracked by soft-dirty bits (its trackers use fingerprints).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The host kernel has no soft-dirty tracking.
    #[error("the host kernel has no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY)")]
    HostKernel,
    /// hugetlbfs pages are not tracked.
    #[error("RAM on hugetlbfs is not tracked by soft-dirty bits")]
    Hugetlbfs,
    /// A file of the QEMU process could not be used.
    #[error("cannot {what} {path}")]
    Access {
        /// What was being done.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A part of RAM is not mapped in the QEMU process as a whole.
    #[error("RAM part {path} is not mapped whole in QEMU process {pid}")]
    NotMapped {
        /// The part's file.
        path: PathBuf,
        /// The QEMU process.
        pid: u32,
    },
}

/// Errors of reading or clearing soft-dirty bits once tracking has begun.
#[derive(Debug, thiserror::Error)]
#[error("soft-dirty tracking of QEMU process {pid}: cannot {what}")]
pub struct SoftDirtyError {
    pid: u32,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// Whether this host's kernel keeps soft-dirty bits: a page this process just wrote reads as
/// soft-dirty in its own pagemap (never on a kernel without them). Asked once per process.
pub fn host_has_soft_dirty() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let mut buffer = vec![0u8; 2 * PAGE_SIZE];
        let base = buffer.as_ptr() as usize;
        let page = base.next_multiple_of(PAGE_SIZE);
        buffer[page - base] = 1;
        std::hint::black_box(&mut buffer);
        let entry = File::open("/proc/self/pagemap").and_then(|pagemap| {
            let mut bytes = [0u8; 8];
            pagemap.read_exact_at(&mut bytes, (page / PAGE_SIZE * 8) as u64)?;
            Ok(u64::from_le_bytes(bytes))
        });
        drop(buffer);
        matches!(entry, Ok(entry) if entry & SOFT_DIRTY != 0)
    })
}

/// One line of `/proc/PID/maps`: addresses, file offset, device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// Address past the end.
    pub end: u64,
    /// Offset in the file of the first address.
    pub offset: u64,
    /// Device of the file (major, minor).
    pub device: (u64, u64),
    /// Inode of the file (0 for anonymous memory).
    pub inode: u64,
}

/// The entries of a `/proc/PID/maps` text; malformed lines are left out.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let _permissions = fields.next()?;
            let offset = fields.next()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let inode = fields.next()?;
            let hex = |text: &str| u64::from_str_radix(text, 16).ok();
            let entry = MapsEntry {
                start: hex(start)?,
                end: hex(end)?,
                offset: hex(offset)?,
                device: (hex(major)?, hex(minor)?),
                inode: inode.parse().ok()?,
            };
            (entry.start < entry.end).then_some(entry)
        })
        .collect()
}

/// Pages of RAM that QEMU maps at consecutive virtual pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// First page of RAM (in the whole of [`GuestRam`]).
    ram_page: usize,
    /// QEMU's virtual page number of it.
    virtual_page: u64,
    pages: usize,
}

/// Where QEMU maps each page of a file part `[part_page, part_page + pages)` of RAM, from the
/// maps entries of its file (`device`, `inode`); `None` unless every page is mapped. A page
/// mapped twice has two spans (both are read).
fn file_spans(
    entries: &[MapsEntry],
    device: (u64, u64),
    inode: u64,
    part_page: usize,
    pages: usize,
) -> Option<Vec<Span>> {
    let mut spans = Vec::new();
    for entry in entries.iter().filter(|entry| entry.device == device && entry.inode == inode) {
        if entry.offset % PAGE_SIZE as u64 != 0 || entry.start % PAGE_SIZE as u64 != 0 {
            continue;
        }
        let first = (entry.offset / PAGE_SIZE as u64) as usize;
        let count = ((entry.end - entry.start) / PAGE_SIZE as u64) as usize;
        let last = first.saturating_add(count).min(pages);
        if first >= last {
            continue;
        }
        spans.push(Span {
            ram_page: part_page + first,
            virtual_page: entry.start / PAGE_SIZE as u64,
            pages: last - first,
        });
    }
    spans.sort_by_key(|span| span.ram_page);
    let mut covered = part_page;
    for span in &spans {
        if span.ram_page > covered {
            return None;
        }
        covered = covered.max(span.ram_page + span.pages);
    }
    (covered >= part_page + pages).then_some(spans)
}

/// Whether this host and this process can track QEMU process `pid` by soft-dirty bits: the
/// kernel has them, and its pagemap may be read and its `clear_refs` written (root, or its
/// owner). Changes nothing.
///
/// # Errors
///
/// [`Unavailable`] saying why not.
pub fn may_track(pid: u32) -> Result<(), Unavailable> {
    open_proc_files(pid).map(drop)
}

fn open_proc_files(pid: u32) -> Result<(File, File), Unavailable> {
    if !host_has_soft_dirty() {
        return Err(Unavailable::HostKernel);
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let pagemap = File::open(proc.join("pagemap")).map_err(access("open", proc.join("pagemap")))?;
    let clear_refs = std::fs::OpenOptions::new()
        .write(true)
        .open(proc.join("clear_refs"))
        .map_err(access("open for writing", proc.join("clear_refs")))?;
    Ok((pagemap, clear_refs))
}

/// The soft-dirty bits of one VM's RAM in its QEMU process, and the record through which every
/// consumer of that process clears them.
#[derive(Debug)]
pub struct SoftDirty {
    pid: u32,
    pagemap: File,
    clear_refs: File,
    spans: Vec<Span>,
    pages: usize,
    record_path: PathBuf,
    /// The record, once it exists (opened read-write when we may, else read-only).
    record: Mutex<Option<File>>,
    /// Entries read at once (a reused buffer).
    entries: Mutex<Vec<u8>>,
}

fn access(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Unavailable {
    let path = path.into();
    move |source| Unavailable::Access { what, path, source }
}

impl SoftDirty {
    /// Soft-dirty tracking of `ram`, mapped by QEMU process `pid`: checks that the host has it,
    /// that the RAM is not on hugetlbfs, that this process may read the QEMU process's pagemap
    /// and write its `clear_refs`, and where QEMU maps every page. Changes nothing.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] saying why not.
    pub fn open(pid: u32, ram: &GuestRam) -> Result<Self, Unavailable> {
        let (pagemap, clear_refs) = open_proc_files(pid)?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let start = crate::process::start_time(pid).ok_or_else(|| {
            access("read", proc.join("stat"))(std::io::Error::from(std::io::ErrorKind::NotFound))
        })?;
        let maps_text =
            std::fs::read_to_string(proc.join("maps")).map_err(access("read", proc.join("maps")))?;
        let entries = parse_maps(&maps_text);
        let mut spans = Vec::new();
        for (offset, part) in ram.parts() {
            let part_page = offset / PAGE_SIZE;
            let pages = part.len().div_ceil(PAGE_SIZE);
            let part_spans = match part.read_method() {
                ReadMethod::Pread => return Err(Unavailable::Hugetlbfs),
                ReadMethod::ProcessMemory => part.process_address().map(|address| {
                    vec![Span { ram_page: part_page, virtual_page: (address / PAGE_SIZE) as u64, pages }]
                }),
                ReadMethod::MappingWithHoles => {
                    let file = part.try_clone_file().expect("a mapped part has a file");
                    let metadata =
                        file.and_then(|file| file.metadata()).map_err(access("stat", part.path()))?;
                    let device =
                        (nix::sys::stat::major(metadata.dev()), nix::sys::stat::minor(metadata.dev()));
                    file_spans(&entries, device, metadata.ino(), part_page, pages)
                }
            };
            spans.extend(
                part_spans.ok_or_else(|| Unavailable::NotMapped { path: part.path().to_path_buf(), pid })?,
            );
        }
        let record_path = Path::new(RECORD_DIR).join(format!("{RECORD_PREFIX}{pid}-{start}"));
        Ok(Self {
            pid,
            pagemap,
            clear_refs,
            spans,
            pages: ram.pages(),
            record_path,
            record: Mutex::new(None),
            entries: Mutex::new(Vec::new()),
        })
    }

    /// The QEMU process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Pages of RAM tracked.
    pub fn pages(&self) -> usize {
        self.pages
    }

    fn error(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> SoftDirtyError {
        let pid = self.pid;
        move |source| SoftDirtyError { pid, what, source }
    }

    /// The record, opened if it exists now (`None`: nobody of ours ever cleared this process).
    fn record(&self) -> Result<std::sync::MutexGuard<'_, Option<File>>, SoftDirtyError> {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if record.is_none() {
            let opened = open_record(&self.record_path, false);
            match opened {
                Ok(file) => *record = Some(file),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(self.error("open its record")(err)),
            }
        }
        Ok(record)
    }

    /// The current generation (clears counted) and when the last clear was.
    ///
    /// # Errors
    ///
    /// [`SoftDirtyError`] when the record cannot be read.
    pub fn generation(&self) -> Result<Generation, SoftDirtyError> {
        let record = self.record()?;
        match record.as_ref() {
            None => Ok(Generation::NEVER_CLEARED),
            Some(file) => {
                let _lock = Lock::shared(file).map_err(self.error("lock its record"))?;
                read_generation(file).map_err(self.error("read its record"))
            }
        }
    }

    /// The pages of `pages` (RAM page numbers) whose soft-dirty bit is set, ascending, into
    /// `dirty` (cleared first), and the generation they belong to: read together under the
    /// record's shared lock, so no clear falls between them.
    ///
    /// # Errors
    ///
    /// [`SoftDirtyError`] when the pagemap or the record cannot be read (the QEMU process ended).
    pub fn dirty_pages(
        &self,
        pages: Range<usize>,
        dirty: &mut Vec<usize>,
    ) -> Result<Generation, SoftDirtyError> {
        dirty.clear();
        let pages = pages.start.min(self.pages)..pages.end.min(self.pages);
        let record = self.record()?;
        let _lock = match record.as_ref() {
            Some(file) => Some(Lock::shared(file).map_err(self.error("lock its record"))?),
            None => None,
        };
        let generation = match record.as_ref() {
            Some(file) => read_generation(file).map_err(self.error("read its record"))?,
            None => Generation::NEVER_CLEARED,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for span in &self.spans {
            let first = pages.start.max(span.ram_page);
            let last = pages.end.min(span.ram_page + span.pages);
            if first >= last {
                continue;
            }
            entries.resize((last - first) * 8, 0);
            let at = (span.virtual_page + (first - span.ram_page) as u64) * 8;
            self.pagemap.read_exact_at(&mut entries, at).map_err(self.error("read its pagemap"))?;
            for (index, entry) in entries.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
                if entry & SOFT_DIRTY != 0 {
                    dirty.push(first + index);
                }
            }
        }
        if self.spans.len() > 1 {
            dirty.sort_unstable();
            dirty.dedup();
        }
        Ok(generation)
    }

    /// Clears the soft-dirty bits of the whole QEMU process and counts the record's generation
    /// up, under its exclusive lock; returns the new generation. Creates the record the first
    /// time (and removes records of QEMU processes that are gone).
    ///
    /// # Errors
    ///
    /// [`SoftDirtyError`] when the record or `clear_refs` cannot be written.
    pub fn clear(&self) -> Result<Generation, SoftDirtyError> {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let writable = match record.take() {
            Some(file) if file_is_writable(&file) => file,
            _ => {
                remove_stale_records();
                open_record(&self.record_path, true).map_err(self.error("create its record"))?
            }
        };
        let file = record.insert(writable);
        let _lock = Lock::exclusive(file).map_err(self.error("lock its record"))?;
        let old = read_generation(file).map_err(self.error("read its record"))?;
        (&self.clear_refs).write_all(b"4").map_err(self.error("write its clear_refs"))?;
        let new = Generation { count: old.count + 1, cleared_at_ms: now_ms() };
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&new.count.to_le_bytes());
        bytes[8..].copy_from_slice(&new.cleared_at_ms.to_le_bytes());
        file.write_all_at(&bytes, 0).map_err(self.error("write its record"))?;
        log::debug!("soft-dirty bits of QEMU process {} cleared (generation {})", self.pid, new.count);
        Ok(new)
    }
}

/// How often a QEMU process's soft-dirty bits were cleared through its record, and when last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Clears counted (0: never).
    pub count: u64,
    /// When the last clear was, in milliseconds since the Unix epoch (0: never).
    pub cleared_at_ms: u64,
}

impl Generation {
    /// No clear recorded.
    pub const NEVER_CLEARED: Generation = Generation { count: 0, cleared_at_ms: 0 };

    /// How long ago the last clear was (`None`: never).
    pub fn since_clear(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_millis(now_ms().saturating_sub(self.cleared_at_ms)))
    }

    /// Whether a tracker may clear now: never cleared, or not within `MIN_CLEAR_INTERVAL`.
    pub fn may_clear(&self) -> bool {
        self.since_clear().is_none_or(|since| since >= MIN_CLEAR_INTERVAL)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

fn read_generation(file: &File) -> std::io::Result<Generation> {
    let mut bytes = [0u8; 16];
    let read = file.read_at(&mut bytes, 0)?;
    if read < bytes.len() {
        return Ok(Generation::NEVER_CLEARED);
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Generation { count: word(0), cleared_at_ms: word(8) })
}

/// Opens (or creates) a record: never through a symbolic link, and only a regular file owned by
/// this user or root (`/dev/shm` is writable by everyone).
fn open_record(path: &Path, create: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if create {
        options.write(true).create(true).mode(0o644);
    }
    let file = match options.open(path) {
        Err(err) if !create && err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(err);
        }
        other => other?,
    };
    let metadata = file.metadata()?;
    let owner = metadata.uid();
    if !metadata.is_file() || (owner != 0 && owner != crate::process::effective_uid()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a record of this user's", path.display()),
        ));
    }
    Ok(file)
}

fn file_is_writable(file: &File) -> bool {
    // O_ACCMODE of the descriptor
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// Removes this user's records of QEMU processes that no longer run (by pid and start time).
fn remove_stale_records() {
    let Ok(dir) = std::fs::read_dir(RECORD_DIR) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(RECORD_PREFIX)) else { continue };
        let Some((pid, start)) = rest.split_once('-') else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { continue };
        let ours = entry
            .metadata()
            .is_ok_and(|metadata| metadata.is_file() && metadata.uid() == crate::process::effective_uid());
        if ours && crate::process::start_time(pid) != Some(start) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An advisory lock on a record, released when dropped.
struct Lock<'a>(&'a File);

impl<'a> Lock<'a> {
    fn shared(file: &'a File) -> std::io::Result<Self> {
        Self::take(file, libc::LOCK_SH)
    }

    fn exclusive(file: &'a File) -> std::io::Result<Self> {
        Self::take(file, libc::LOCK_EX)
    }

    fn take(file: &'a File, operation: libc::c_int) -> std::io::Result<Self> {
        let arg = if operation == libc::LOCK_EX {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        #[allow(deprecated)]
        nix::fcntl::flock(std::os::fd::AsRawFd::as_raw_fd(file), arg)?;
        Ok(Self(file))
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        #[allow(deprecated)]
        let _ = nix::fcntl::flock(std::os::fd::AsRawFd::as_raw_fd(self.0), nix::fcntl::FlockArg::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 1311   /usr/bin/qemu-system-x86_64
7f3a40000000-7f3a44000000 rw-s 00000000 00:1a 4242   /dev/shm/qemu_ram_vm
7f3a44000000-7f3a46000000 rw-s 04000000 00:1a 4242   /dev/shm/qemu_ram_vm
7f3a50000000-7f3a50200000 rw-s 00000000 00:01 77   /memfd:memory-backend-memfd (deleted)
7f3a60000000-7f3a60001000 ---p 00000000 00:00 0 
garbage line
7fff0000-7ffe0000 rw-p 00000000 00:00 0   [inverted]
";

    #[test]
    fn maps_lines_parse_and_malformed_ones_are_left_out() {
        let entries = parse_maps(MAPS);
        assert_eq!(entries.len(), 5);
        assert_eq!(
            entries[1],
            MapsEntry {
                start: 0x7f3a40000000,
                end: 0x7f3a44000000,
                offset: 0,
                device: (0, 0x1a),
                inode: 4242
            }
        );
        assert_eq!(entries[2].offset, 0x0400_0000);
        assert_eq!(entries[3].device, (0, 1));
    }

    #[test]
    fn file_parts_are_placed_by_device_inode_and_offset() {
        let entries = parse_maps(MAPS);
        // 96 MiB file mapped in two pieces: RAM pages 10.. of the whole start at this part
        let pages = (96 << 20) / PAGE_SIZE;
        let spans = file_spans(&entries, (0, 0x1a), 4242, 10, pages).unwrap();
        assert_eq!(
            spans,
            vec![
                Span { ram_page: 10, virtual_page: 0x7f3a40000000 / 4096, pages: 16384 },
                Span { ram_page: 10 + 16384, virtual_page: 0x7f3a44000000 / 4096, pages: 8192 },
            ]
        );
        // a part longer than what is mapped, another device, another inode: not placed
        assert_eq!(file_spans(&entries, (0, 0x1a), 4242, 0, pages + 1), None);
        assert_eq!(file_spans(&entries, (0, 0x1b), 4242, 0, 16), None);
        assert_eq!(file_spans(&entries, (0, 0x1a), 4243, 0, 16), None);
        // a mapping larger than the part is clipped to it
        let memfd = file_spans(&entries, (0, 1), 77, 0, 100).unwrap();
        assert_eq!(memfd, vec![Span { ram_page: 0, virtual_page: 0x7f3a50000000 / 4096, pages: 100 }]);
    }

    #[test]
    fn a_gap_in_the_mapping_leaves_the_part_unplaced() {
        let maps = "1000000-1004000 rw-s 00000000 00:05 9 /f\n1010000-1014000 rw-s 00008000 00:05 9 /f\n";
        assert_eq!(file_spans(&parse_maps(maps), (0, 5), 9, 0, 12), None, "pages 4-7 are not mapped");
        let whole = "1000000-1004000 rw-s 00000000 00:05 9 /f\n1010000-1018000 rw-s 00004000 00:05 9 /f\n";
        assert!(file_spans(&parse_maps(whole), (0, 5), 9, 0, 12).is_some());
    }

    #[test]
    fn generations_allow_a_clear_once_the_interval_passed() {
        assert!(Generation::NEVER_CLEARED.may_clear());
        assert_eq!(Generation::NEVER_CLEARED.since_clear(), None);
        let now = Generation { count: 3, cleared_at_ms: now_ms() };
        assert!(!now.may_clear());
        let old = Generation { count: 3, cleared_at_ms: now_ms() - 3_000 };
        assert!(old.may_clear());
    }

    #[test]
    fn the_probe_answers_as_the_kernel_config_says() {
        // this host's answer must match what the kernel was built with, where it says
        let Ok(config) = std::process::Command::new("sh").arg("-c").arg("zcat /proc/config.gz").output()
        else {
            return;
        };
        let config = String::from_utf8_lossy(&config.stdout);
        if config.contains("CONFIG_MEM_SOFT_DIRTY=y") {
            assert!(host_has_soft_dirty());
        } else if config.contains("# CONFIG_MEM_SOFT_DIRTY is not set") {
            assert!(!host_has_soft_dirty());
        }
    }
}
