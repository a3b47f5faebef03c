//! The read-only mapping of a guest RAM file. Every `unsafe` block of the crate lives here.
//!
//! Guest RAM changes under every reader: QEMU's vCPUs write it while we read it. Rust assumes
//! the bytes behind a `&[u8]` never change while the reference lives, so the project's own logic
//! never reads through such views. It copies out through raw pointers instead, and uses volatile
//! loads where a second look must really look again (the consistency check).
//!
//! Two callers do hold a `&[u8]` over live memory, and neither lets Rust load from it: the
//! public API's [`view`](Mapping::view) (`SharedMemoryBridge::read_physical`), whose callers are
//! told the bytes change, and the FUSE read path, which passes the slice straight to the
//! kernel (`writev` on the FUSE device): the kernel copies the bytes, no Rust code reads them.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};

use super::{BridgeError, PAGE_SIZE};

/// Copies at least this large are split across threads when more than one core is available.
const PARALLEL_COPY_THRESHOLD: usize = 16 << 20;

/// Zeros to answer reads of holes with, without allocating.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// How a RAM file is read so that reading never allocates a page the guest has not touched:
/// touching an untouched page of a tmpfs, memfd or hugetlbfs mapping allocates it, even for a
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMethod {
    /// `lseek(SEEK_DATA/SEEK_HOLE)` names the holes (tmpfs, memfd, regular files): holes read
    /// as zeros without touching the mapping, data is copied from the mapping (and handed to
    /// the kernel as is by the mount: zero copy).
    MappingWithHoles,
    /// hugetlbfs reports every page as data, and a fault on an untouched huge page allocates
    /// one (or raises SIGBUS when the pool is empty): every read is a `pread`, which returns
    /// zeros for untouched pages and allocates nothing. A copy, not zero-copy.
    Pread,
    /// Private guest RAM (no shared backend) is read out of the QEMU process with
    /// `process_vm_readv`: a copy, which needs root or the ptrace permission on QEMU. An
    /// untouched private page reads as the zero page and is not allocated.
    ProcessMemory,
}

/// Where the bytes come from.
#[derive(Debug)]
enum Source {
    /// A shared file, mapped read-only.
    File { map: Mmap, file: File },
    /// Another process's address space.
    Process { pid: nix::unistd::Pid, address: usize },
}

/// A run of the file that is all data or all hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: usize,
    end: usize,
    data: bool,
}

/// A read-only, shared mapping of a whole guest RAM file.
#[derive(Debug)]
pub struct Mapping {
    source: Source,
    len: usize,
    path: PathBuf,
    method: ReadMethod,
    page_size: usize,
    /// Slot in the SIGBUS guard's table, if one was free.
    guard_slot: Option<usize>,
    /// One bit per 4 KiB page seen as data (for [`ReadMethod::MappingWithHoles`]): a page the
    /// guest touched stays allocated, so a small read of known pages needs no system call.
    known_data: KnownData,
}

/// Pages known to hold data, one bit each; bits are only ever set (a page the guest gives back
/// with a hole punch, say by a balloon, still counts as data: reading it maps one zero page).
#[derive(Debug, Default)]
struct KnownData(Vec<AtomicU64>);

impl KnownData {
    const PAGE: usize = PAGE_SIZE;

    fn new(len: usize) -> Self {
        Self((0..len.div_ceil(Self::PAGE).div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Whether every page of `offset..offset + len` (a checked, non-empty range) is known data.
    #[inline]
    fn covers(&self, offset: usize, len: usize) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let (first, last) = (offset / Self::PAGE, (offset + len - 1) / Self::PAGE);
        if first == last {
            return self.0[first / 64].load(Ordering::Relaxed) & (1 << (first % 64)) != 0;
        }
        (first / 64..=last / 64).all(|word| {
            let low = if word == first / 64 { first % 64 } else { 0 };
            let high = if word == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - high)) & (u64::MAX << low);
            self.0[word].load(Ordering::Relaxed) & mask == mask
        })
    }

    /// Records the pages overlapping `start..end` as data.
    fn mark(&self, start: usize, end: usize) {
        if self.0.is_empty() || start >= end {
            return;
        }
        for page in start / Self::PAGE..=(end - 1) / Self::PAGE {
            self.0[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(slot) = self.guard_slot {
            sigbus::unregister(slot);
        }
    }
}

impl Mapping {
    /// Opens `path` read-only and maps all of it `PROT_READ`, `MAP_SHARED`.
    ///
    /// The first mapping opened in a process installs a process-wide SIGBUS handler (see the
    /// `sigbus` module below); faults outside this crate's mappings go on to the handler that
    /// was installed before it, or get the default action.
    pub fn open(path: &Path) -> Result<Self, BridgeError> {
        // io::Error's message does not say which file; put the path in it.
        let with_path =
            |err: std::io::Error| std::io::Error::new(err.kind(), format!("{}: {err}", path.display()));
        let file = File::open(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => BridgeError::FileNotFound(path.display().to_string()),
            std::io::ErrorKind::PermissionDenied => BridgeError::PermissionDenied,
            _ => BridgeError::MmapFailed(with_path(err)),
        })?;
        Self::from_file(file, path).map_err(|err| match err {
            BridgeError::MmapFailed(err) => BridgeError::MmapFailed(with_path(err)),
            other => other,
        })
    }

    /// Maps an open file; `path` is what it is called in messages.
    pub(crate) fn from_file(file: File, path: &Path) -> Result<Self, BridgeError> {
        let metadata = file.metadata().map_err(BridgeError::MmapFailed)?;
        if !metadata.is_file() {
            return Err(BridgeError::NotAFile(path.display().to_string()));
        }
        let (page_size, hugetlbfs) = page_size_of(&file).map_err(BridgeError::MmapFailed)?;
        let method = if hugetlbfs { ReadMethod::Pread } else { ReadMethod::MappingWithHoles };
        let mut options = MmapOptions::new();
        if hugetlbfs {
            // Never touched (reads are preads), so it needs no huge pages of the pool reserved.
            options.no_reserve_swap();
        }
        // SAFETY: the mapping is read-only and shared; memmap2 keeps it alive as long as `Mmap`.
        // The file's contents change under it (that is its purpose), so no code of this crate
        // reads through references into it: `view` is for callers who are told the bytes may
        // change, and `read_for_reply` hands its slice to the kernel; everything else copies
        // through raw pointers. A file that shrinks under the mapping is caught by
        // `check_file_len` before each copy and by the SIGBUS guard (`sigbus`, below) during one.
        let map = unsafe { options.map(&file) }.map_err(BridgeError::MmapFailed)?;
        let guard_slot = sigbus::register(map.as_ptr() as usize, map.len(), page_size);
        if guard_slot.is_none() && !map.is_empty() {
            log::warn!(
                "{}: no SIGBUS guard slot left; a truncated file could crash this process",
                path.display()
            );
        }
        let len = map.len();
        let known_data =
            if method == ReadMethod::MappingWithHoles { KnownData::new(len) } else { KnownData::default() };
        Ok(Self {
            source: Source::File { map, file },
            len,
            path: path.to_path_buf(),
            method,
            page_size,
            guard_slot,
            known_data,
        })
    }

    /// The `len` bytes at `address` in process `pid`'s memory (private guest RAM), read with
    /// `process_vm_readv`; `path` is what they are called in messages. Checks that the first
    /// byte can be read.
    ///
    /// # Errors
    ///
    /// [`BridgeError::ProcessMemory`] when the process's memory cannot be read (it is gone, or
    /// this user may not trace it).
    pub fn of_process(pid: u32, address: usize, len: usize, path: &Path) -> Result<Self, BridgeError> {
        let mapping = Self {
            source: Source::Process { pid: nix::unistd::Pid::from_raw(pid as i32), address },
            len,
            path: path.to_path_buf(),
            method: ReadMethod::ProcessMemory,
            page_size: PAGE_SIZE,
            guard_slot: None,
            known_data: KnownData::default(),
        };
        if len > 0 {
            mapping.process_read(0, &mut [0u8; 1])?;
        }
        Ok(mapping)
    }

    /// Mapped length in bytes (the file's size when it was opened).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping of a file source; reads through it happen only for [`ReadMethod::MappingWithHoles`].
    fn map(&self) -> &Mmap {
        match &self.source {
            Source::File { map, .. } => map,
            Source::Process { .. } => unreachable!("process memory is never read through a mapping"),
        }
    }

    fn file(&self) -> &File {
        match &self.source {
            Source::File { file, .. } => file,
            Source::Process { .. } => unreachable!("process memory has no file"),
        }
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new descriptor of the very file that is mapped (for FUSE passthrough, which must
    /// serve the file that was verified, not whatever its path names now); `None` for private
    /// RAM, which has no file.
    pub fn try_clone_file(&self) -> Option<std::io::Result<File>> {
        match &self.source {
            Source::File { file, .. } => Some(file.try_clone()),
            Source::Process { .. } => None,
        }
    }

    /// How this file's bytes are read (see [`ReadMethod`]).
    pub fn read_method(&self) -> ReadMethod {
        self.method
    }

    /// The size of the pages the kernel maps the file with (2 MiB or 1 GiB on hugetlbfs).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes of the file that hold data (allocated pages), as `lseek(SEEK_DATA)` sees them; on
    /// hugetlbfs, which reports everything as data, the whole file.
    ///
    /// # Errors
    ///
    /// [`BridgeError::MmapFailed`] when the file cannot be examined.
    pub fn data_bytes(&self) -> Result<u64, BridgeError> {
        let segments = self.segments(0, self.len)?;
        Ok(segments
            .iter()
            .filter(|segment| segment.data)
            .map(|segment| (segment.end - segment.start) as u64)
            .sum())
    }

    /// The data and hole runs of `offset..offset + len`. Callers checked the range. Pages the
    /// guest touches after the look are data the next time; a read that saw them as holes
    /// returns zeros, as if it had happened just before the write.
    ///
    /// Pages in the file's page cache (`mincore` of the mapping: no fault, no allocation) are
    /// data. The others are asked of `lseek(SEEK_DATA)`, which also counts pages swapped out as
    /// data: only what it skips is a hole. (`SEEK_HOLE` would walk every page up to the next
    /// hole, the whole file for a guest that touched all of it, on every read.)
    fn segments(&self, offset: usize, len: usize) -> Result<Vec<Segment>, BridgeError> {
        const PAGE: usize = PAGE_SIZE;
        let end = offset + len;
        if self.method != ReadMethod::MappingWithHoles || len == 0 || self.known_data.covers(offset, len) {
            return Ok(vec![Segment { start: offset, end, data: true }]);
        }
        let first_page = offset / PAGE;
        let last_page = end.div_ceil(PAGE).min(self.len.div_ceil(PAGE));
        let mut resident = vec![0u8; last_page - first_page];
        // SAFETY: `first_page * PAGE .. last_page * PAGE` lies inside the mapping (whose last
        // page is whole in the address space even when the file ends inside it), the address is
        // page-aligned as mincore requires, and `resident` has one byte per page. mincore only
        // reads the page tables and page cache; it touches no page.
        let status = unsafe {
            libc::mincore(
                self.map().as_ptr().add(first_page * PAGE) as *mut libc::c_void,
                (last_page - first_page) * PAGE,
                resident.as_mut_ptr(),
            )
        };
        if status != 0 {
            return Err(BridgeError::MmapFailed(std::io::Error::last_os_error()));
        }
        let mut segments: Vec<Segment> = Vec::new();
        let mut push = |start: usize, stop: usize, data: bool| {
            let (start, stop) = (start.max(offset), stop.min(end));
            if start >= stop {
                return;
            }
            match segments.last_mut() {
                Some(last) if last.data == data && last.end == start => last.end = stop,
                _ => segments.push(Segment { start, end: stop, data }),
            }
        };
        let mut page = first_page;
        while page < last_page {
            if resident[page - first_page] & 1 != 0 {
                push(page * PAGE, (page + 1) * PAGE, true);
                page += 1;
                continue;
            }
            let data_at = match nix::unistd::lseek(
                self.file(),
                (page * PAGE) as libc::off_t,
                nix::unistd::Whence::SeekData,
            ) {
                Ok(at) => (at as usize).max(page * PAGE),
                // no data from here to the end of the file, or the file ends before `page`
                // (truncated): only the size tells which
                Err(nix::errno::Errno::ENXIO) => {
                    self.check_file_len(offset, len)?;
                    usize::MAX
                }
                Err(errno) => return Err(BridgeError::MmapFailed(errno.into())),
            };
            if data_at == page * PAGE {
                // allocated but not in memory now (swapped out): data, read through the mapping
                push(page * PAGE, (page + 1) * PAGE, true);
                page += 1;
            } else {
                let next = data_at.div_ceil(PAGE).min(last_page);
                push(page * PAGE, next * PAGE, false);
                page = next.max(page + 1);
            }
        }
        for segment in segments.iter().filter(|segment| segment.data) {
            self.known_data.mark(segment.start, segment.end);
        }
        Ok(segments)
    }

    /// The file's current length. A RAM file reused by a new QEMU can be truncated under the
    /// mapping; touching a page past its new end raises SIGBUS.
    pub fn current_file_len(&self) -> std::io::Result<u64> {
        match &self.source {
            Source::File { file, .. } => Ok(file.metadata()?.len()),
            Source::Process { .. } => Ok(self.len as u64),
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BridgeError::InvalidAddress { addr: offset as u64, len, max: self.len }),
        }
    }

    /// Fails when the file no longer holds `offset..offset + len`, or when a page of the
    /// mapping was ever lost to a truncation (the guard replaced it with zeros: the mapping no
    /// longer mirrors the file).
    fn check_file_len(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        if let Source::Process { .. } = self.source {
            return Ok(());
        }
        let current = self.current_file_len().map_err(BridgeError::MmapFailed)?;
        let poisoned = self.guard_slot.is_some_and(sigbus::poisoned);
        if poisoned || (offset + len) as u64 > current {
            return Err(BridgeError::FileShrunk { mapped: self.len, current });
        }
        Ok(())
    }

    /// Before a copy into our own memory: with the SIGBUS guard, a page lost to a truncation
    /// during the copy reads as zeros and is reported after it ([`check_intact`]), so only the
    /// guard's flag is consulted here, no system call; without a guard slot, `fstat`.
    fn check_before_copy(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        if self.guard_slot.is_some() {
            return self.check_intact();
        }
        self.check_file_len(offset, len)
    }

    /// After a copy: fails when a page was lost to a truncation during it (the SIGBUS guard
    /// left zeros in the copy). A truncation that touched no copied page leaves the copy valid,
    /// so only the guard's flag is consulted; no `fstat` on the success path.
    fn check_intact(&self) -> Result<(), BridgeError> {
        if self.guard_slot.is_some_and(sigbus::poisoned) {
            let current = self.current_file_len().unwrap_or(0);
            return Err(BridgeError::FileShrunk { mapped: self.len, current });
        }
        Ok(())
    }

    /// Threads for a copy or scan of `len` bytes: all cores (at most 8) when large, else one.
    fn threads_for(len: usize) -> usize {
        if len >= PARALLEL_COPY_THRESHOLD {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
        } else {
            1
        }
    }

    /// A borrowed view of `len` bytes at `offset`. The guest may change them while the view
    /// lives; see [`crate::SharedMemoryBridge::read_physical`].
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`], and [`BridgeError::NotMapped`] for private RAM, which is
    /// read by copying only.
    pub fn view(&self, offset: usize, len: usize) -> Result<&[u8], BridgeError> {
        self.check_range(offset, len)?;
        match &self.source {
            Source::File { map, .. } => Ok(&map[offset..offset + len]),
            Source::Process { .. } => Err(BridgeError::NotMapped),
        }
    }

    /// `len` bytes at `offset` for a reply that the kernel copies: the live mapping itself when
    /// the range is all data (zero copy: Rust never loads these bytes, the kernel copies them),
    /// zeros when it is all hole, and a copy otherwise (mixed ranges, hugetlbfs). Never touches
    /// a page the guest has not touched. The file can still shrink between the size check and
    /// the kernel's copy of a borrowed range: the window is one `fstat`.
    pub fn read_for_reply(&self, offset: usize, len: usize) -> Result<Cow<'_, [u8]>, BridgeError> {
        self.check_range(offset, len)?;
        self.check_file_len(offset, len)?;
        let segments = self.segments(offset, len)?;
        match segments.as_slice() {
            [only] if only.data && self.method == ReadMethod::MappingWithHoles => {
                Ok(Cow::Borrowed(&self.map()[offset..offset + len]))
            }
            [only] if !only.data && len <= ZEROS.len() => Ok(Cow::Borrowed(&ZEROS[..len])),
            _ => {
                let mut copy = vec![0u8; len];
                self.copy_segments(offset, &mut copy, &segments)?;
                self.check_intact()?;
                Ok(Cow::Owned(copy))
            }
        }
    }

    /// Copies `dst.len()` bytes at `offset` into `dst`, split across threads when large.
    #[inline]
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        if self.copy_known(offset, dst) {
            return Ok(());
        }
        self.copy_with_threads(offset, dst, Self::threads_for(dst.len()))
    }

    /// The path of small reads (a page-table walk's 8-byte loads): copies when the range is in
    /// bounds, every page of it is known data and the SIGBUS guard watches the mapping, with no
    /// system call; whether it did. A truncation seen before or during the copy leaves it to
    /// the full path, which reports it.
    #[inline]
    fn copy_known(&self, offset: usize, dst: &mut [u8]) -> bool {
        const SMALL: usize = 64 << 10;
        let Some(slot) = self.guard_slot else { return false };
        let in_bounds = offset.checked_add(dst.len()).is_some_and(|end| end <= self.len);
        if !in_bounds
            || dst.is_empty()
            || dst.len() > SMALL
            || sigbus::poisoned(slot)
            || !self.known_data.covers(offset, dst.len())
        {
            return false;
        }
        self.copy_unchecked(offset, dst);
        !sigbus::poisoned(slot)
    }

    /// [`copy_to`](Self::copy_to) into a buffer known to hold zeros (freshly allocated): holes
    /// are skipped instead of written, so a fresh buffer's untouched pages stay unallocated
    /// too (a copy of a mostly idle 4 GiB guest costs what the guest touched).
    pub fn copy_to_zeroed(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        self.check_range(offset, dst.len())?;
        self.check_before_copy(offset, dst.len())?;
        let segments: Vec<Segment> =
            self.segments(offset, dst.len())?.into_iter().filter(|s| s.data).collect();
        self.copy_segments(offset, dst, &segments)?;
        self.check_intact()
    }

    /// Copies `dst.len()` bytes at `offset` into `dst` on `threads` threads (1 = this thread).
    pub fn copy_with_threads(
        &self,
        offset: usize,
        dst: &mut [u8],
        threads: usize,
    ) -> Result<(), BridgeError> {
        self.check_range(offset, dst.len())?;
        self.check_before_copy(offset, dst.len())?;
        if threads <= 1 || dst.len() < 2 * PAGE_SIZE {
            self.copy_range(offset, dst)?;
            // a truncation during the copy left zeros where pages were lost
            return self.check_intact();
        }
        // Page-aligned chunks so that each thread streams whole pages; the last chunk runs on
        // this thread.
        let chunk = dst.len().div_ceil(threads).next_multiple_of(PAGE_SIZE);
        let results: Vec<Result<(), BridgeError>> = std::thread::scope(|scope| {
            let mut parts = dst.chunks_mut(chunk).enumerate();
            let last = parts.next_back();
            let workers: Vec<_> = parts
                .map(|(index, part)| scope.spawn(move || self.copy_range(offset + index * chunk, part)))
                .collect();
            let mut results: Vec<_> =
                last.into_iter().map(|(index, part)| self.copy_range(offset + index * chunk, part)).collect();
            for worker in workers {
                results.push(worker.join().unwrap_or_else(|_| {
                    Err(BridgeError::MmapFailed(std::io::Error::other("a copy thread panicked")))
                }));
            }
            results
        });
        results.into_iter().collect::<Result<(), _>>()?;
        self.check_intact()
    }

    /// Calls `each(page, bytes)` for every 4 KiB page of the mapping in order: the page's
    /// bytes copied out of live memory, or `None` for a page of a hole (never allocated: not
    /// read, so not allocated by reading either). The last page may be shorter.
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`] when the file was truncated during it).
    pub fn for_each_page(&self, each: impl FnMut(usize, Option<&[u8]>)) -> Result<(), BridgeError> {
        self.for_each_page_in(0..self.len.div_ceil(PAGE_SIZE), each)
    }

    /// [`for_each_page`](Self::for_each_page) over the pages `pages` only (clamped to the
    /// mapping): what a scan that looks at a share of the RAM at a time needs.
    ///
    /// # Errors
    ///
    /// As [`for_each_page`](Self::for_each_page).
    pub fn for_each_page_in(
        &self,
        pages: std::ops::Range<usize>,
        mut each: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), BridgeError> {
        const CHUNK: usize = 1 << 20;
        let end = (pages.end.saturating_mul(PAGE_SIZE)).min(self.len);
        let mut offset = pages.start.saturating_mul(PAGE_SIZE).min(end);
        self.check_before_copy(offset, end - offset)?;
        // one page at a time into a buffer that stays in the L1 cache for `each` to look at
        let mut buffer = [0u8; PAGE_SIZE];
        while offset < end {
            let len = CHUNK.min(end - offset);
            for segment in self.segments(offset, len)? {
                // segments are page-aligned inside a chunk (chunks are whole pages)
                for start in (segment.start..segment.end).step_by(PAGE_SIZE) {
                    let page = &mut buffer[..PAGE_SIZE.min(segment.end - start)];
                    if segment.data {
                        let part = Segment { start, end: start + page.len(), data: true };
                        self.copy_segments(start, page, &[part])?;
                        each(start / PAGE_SIZE, Some(page));
                    } else {
                        each(start / PAGE_SIZE, None);
                    }
                }
            }
            self.check_intact()?;
            offset += len;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` (a range callers checked), holes as zeros.
    fn copy_range(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        let segments = self.segments(offset, dst.len())?;
        self.copy_segments(offset, dst, &segments)
    }

    fn copy_segments(&self, offset: usize, dst: &mut [u8], segments: &[Segment]) -> Result<(), BridgeError> {
        for segment in segments {
            let part = &mut dst[segment.start - offset..segment.end - offset];
            match (segment.data, self.method) {
                (false, _) => part.fill(0),
                (true, ReadMethod::MappingWithHoles) => self.copy_unchecked(segment.start, part),
                (true, ReadMethod::Pread) => self.pread(segment.start, part)?,
                (true, ReadMethod::ProcessMemory) => self.process_read(segment.start, part)?,
            }
        }
        Ok(())
    }

    /// `process_vm_readv` of `dst.len()` bytes at `offset` of the process's RAM block.
    fn process_read(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        let Source::Process { pid, address } = &self.source else { unreachable!("not process memory") };
        let mut done = 0;
        while done < dst.len() {
            let remote =
                [nix::sys::uio::RemoteIoVec { base: address + offset + done, len: dst.len() - done }];
            let read = nix::sys::uio::process_vm_readv(
                *pid,
                &mut [std::io::IoSliceMut::new(&mut dst[done..])],
                &remote,
            )
            .map_err(|errno| BridgeError::ProcessMemory(errno.into()))?;
            if read == 0 {
                return Err(BridgeError::ProcessMemory(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            done += read;
        }
        Ok(())
    }

    /// A read for the consistency check and for buffered writes: `pread` or
    /// `process_vm_readv`.
    fn read_copy(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        match self.method {
            ReadMethod::ProcessMemory => self.process_read(offset, dst),
            _ => self.pread(offset, dst),
        }
    }

    /// `pread` of `dst.len()` bytes at `offset`; a file that ends early shrank.
    fn pread(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        self.file().read_exact_at(dst, offset as u64).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                BridgeError::FileShrunk { mapped: self.len, current: self.current_file_len().unwrap_or(0) }
            }
            _ => BridgeError::MmapFailed(err),
        })
    }

    /// Copy without checks; callers have checked the range against the mapping.
    #[inline]
    fn copy_unchecked(&self, offset: usize, dst: &mut [u8]) {
        debug_assert!(offset + dst.len() <= self.len);
        // SAFETY: `offset + dst.len() <= self.len` (checked by every caller), so the
        // source range lies inside the live mapping, which cannot overlap `dst` (heap or stack
        // memory of ours). The copy goes through raw pointers: no `&[u8]` to changing memory is
        // created. Concurrent guest writes may tear the copy; the consistency check detects it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map().as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
        // Keep the compiler from moving or merging this copy with a later re-read.
        compiler_fence(Ordering::SeqCst);
    }

    /// Indexes of the `page_size` pages of `copy` (a copy of the mapping from offset 0) whose
    /// live bytes differ from it now. Live memory is read with volatile loads, so each call
    /// really looks again.
    pub fn changed_pages(&self, copy: &[u8], page_size: usize) -> Result<Vec<usize>, BridgeError> {
        self.check_range(0, copy.len())?;
        self.check_file_len(0, copy.len())?;
        let page_size = page_size.max(1);
        let pages = copy.len().div_ceil(page_size);
        // Pages whose look fails (pread error, lseek error) count as changed: they prove nothing.
        let scan = |first: usize, last: usize| -> Vec<usize> {
            let start = first * page_size;
            let end = (last * page_size).min(copy.len());
            if start >= end {
                return Vec::new();
            }
            let Ok(live) = self.live_view(start, end - start) else { return (first..last).collect() };
            (first..last)
                .filter(|&page| {
                    let page_start = page * page_size;
                    let page_end = (page_start + page_size).min(copy.len());
                    !live.equals(self, page_start, &copy[page_start..page_end])
                })
                .collect()
        };
        let threads = Self::threads_for(copy.len());
        if threads <= 1 {
            let changed = scan(0, pages);
            self.check_intact()?;
            return Ok(changed);
        }
        let per_thread = pages.div_ceil(threads);
        let scan = &scan;
        let mut changed = std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads)
                .map(|index| {
                    let range = (index * per_thread).min(pages)..((index + 1) * per_thread).min(pages);
                    (range.clone(), scope.spawn(move || scan(range.start, range.end)))
                })
                .collect();
            let mut changed = scan(0, per_thread.min(pages));
            for (range, worker) in workers {
                // a worker that died proves nothing: count its pages as changed
                changed.extend(worker.join().unwrap_or_else(|_| range.collect()));
            }
            changed
        });
        changed.sort_unstable();
        self.check_intact()?;
        Ok(changed)
    }

    /// How to look at live memory again over `offset..offset + len`: its data and hole runs
    /// (holes are compared with zeros, never touched), or for hugetlbfs a fresh `pread`.
    fn live_view(&self, offset: usize, len: usize) -> Result<LiveView, BridgeError> {
        match self.method {
            ReadMethod::MappingWithHoles => Ok(LiveView::Mapped(self.segments(offset, len)?)),
            ReadMethod::Pread | ReadMethod::ProcessMemory => {
                let mut bytes = vec![0u8; len];
                self.read_copy(offset, &mut bytes)?;
                Ok(LiveView::Read { offset, bytes })
            }
        }
    }

    /// Whether live memory at `offset` equals `expected` now. Callers guarantee
    /// `offset + expected.len() <= self.len`.
    fn live_equals_unchecked(&self, offset: usize, expected: &[u8]) -> bool {
        debug_assert!(offset + expected.len() <= self.len);
        // a page at a time into a buffer that stays in the L1 cache, then compared there: the
        // copy really reads live memory again (see `copy_unchecked`), and both the copy and
        // the comparison run at vector speed
        let mut buffer = [0u8; PAGE_SIZE];
        expected.chunks(buffer.len()).enumerate().all(|(index, part)| {
            let live = &mut buffer[..part.len()];
            self.copy_unchecked(offset + index * PAGE_SIZE, live);
            live == part
        })
    }

    /// Writes `len` bytes of the mapping at `offset` to `file` from its current position on,
    /// sparse: holes of the RAM file (and on hugetlbfs, pages of zeros) become holes of the
    /// output, which ends up exactly `len` bytes long past that position. Data goes straight
    /// from the mapping (the kernel copies; no buffer of ours, no Rust reference to live
    /// memory); on hugetlbfs through a `pread` buffer.
    pub fn write_to(&self, file: &std::fs::File, offset: usize, len: usize) -> Result<(), BridgeError> {
        use std::io::Seek;
        self.check_range(offset, len)?;
        self.check_file_len(offset, len)?;
        let start = (&mut &*file).stream_position().map_err(BridgeError::Write)?;
        let mut output = super::sparse::SparseWriter::at(file, start);
        for segment in self.segments(offset, len)? {
            let part = segment.end - segment.start;
            match (segment.data, self.method) {
                (false, _) => output.skip(part as u64),
                (true, ReadMethod::MappingWithHoles) => {
                    self.write_mapped(file, segment.start, part, output.position())?;
                    output.skip(part as u64);
                }
                (true, ReadMethod::Pread | ReadMethod::ProcessMemory) => {
                    let mut buffer = vec![0u8; part.min(1 << 20)];
                    let mut done = 0;
                    while done < part {
                        let chunk = (part - done).min(buffer.len());
                        self.read_copy(segment.start + done, &mut buffer[..chunk])?;
                        output.write(&buffer[..chunk]).map_err(BridgeError::Write)?;
                        done += chunk;
                    }
                }
            }
        }
        let end = output.finish().map_err(BridgeError::Write)?;
        (&mut &*file).seek(std::io::SeekFrom::Start(end)).map_err(BridgeError::Write)?;
        self.check_intact()
    }

    /// `pwrite`s `len` bytes of the mapping at `offset` to `file` at `position`.
    fn write_mapped(
        &self,
        file: &std::fs::File,
        offset: usize,
        len: usize,
        position: u64,
    ) -> Result<(), BridgeError> {
        use std::os::fd::AsRawFd;
        let mut done = 0;
        while done < len {
            let chunk = (len - done).min(1 << 30);
            // SAFETY: `offset + done + chunk <= offset + len <= self.len` (callers checked
            // the range), so the kernel reads only inside the live mapping; it reads, never
            // writes, it.
            let written = unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    self.map().as_ptr().add(offset + done).cast(),
                    chunk,
                    (position + done as u64) as libc::off_t,
                )
            };
            if written < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(BridgeError::Write(err));
            }
            if written == 0 {
                return Err(BridgeError::Write(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            done += written as usize;
        }
        Ok(())
    }
}

/// Live memory looked at again, for the consistency check.
enum LiveView {
    /// The data and hole runs of the range: data is read from the mapping with volatile loads.
    Mapped(Vec<Segment>),
    /// A fresh `pread` of the range (hugetlbfs).
    Read { offset: usize, bytes: Vec<u8> },
}

impl LiveView {
    /// Whether the live bytes at `offset` (inside the view) equal `expected`.
    fn equals(&self, mapping: &Mapping, offset: usize, expected: &[u8]) -> bool {
        let end = offset + expected.len();
        match self {
            LiveView::Read { offset: start, bytes } => bytes[offset - start..end - start] == *expected,
            LiveView::Mapped(segments) => {
                segments.iter().filter(|s| s.start < end && s.end > offset).all(|segment| {
                    let (from, to) = (segment.start.max(offset), segment.end.min(end));
                    let part = &expected[from - offset..to - offset];
                    if segment.data {
                        mapping.live_equals_unchecked(from, part)
                    } else {
                        part.iter().all(|&byte| byte == 0)
                    }
                })
            }
        }
    }
}

/// Whether `file` is on hugetlbfs.
///
/// # Errors
///
/// When its file system cannot be examined.
pub fn is_hugetlbfs(file: &File) -> std::io::Result<bool> {
    page_size_of(file).map(|(_, hugetlbfs)| hugetlbfs)
}

/// The size of the pages the kernel maps `file` with, and whether it is on hugetlbfs: the huge
/// page size there (2 MiB or 1 GiB), the system page size elsewhere.
fn page_size_of(file: &File) -> std::io::Result<(usize, bool)> {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let stats = nix::sys::statfs::fstatfs(file)?;
    if stats.filesystem_type().0 as i64 == HUGETLBFS_MAGIC {
        return Ok((stats.block_size() as usize, true));
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten();
    Ok((page.map_or(PAGE_SIZE, |size| size as usize), false))
}

/// The SIGBUS guard. Touching a page of a shared file mapping past the file's end raises SIGBUS,
/// which would kill the process: a RAM file can be truncated under us at any time (a new QEMU
/// reusing the path does it). The size check before each copy leaves a window; this closes it.
///
/// Every mapping registers its address range and page size. The handler, for a fault inside a
/// registered range, maps a private zero page (of the mapping's page size: a 4 KiB page cannot
/// replace part of a huge page) over the faulting page, so the access completes reading zeros,
/// marks that mapping poisoned and returns. Callers re-check after each copy and report
/// [`BridgeError::FileShrunk`] instead of returning the zeros.
///
/// The handler is process-wide: the first [`Mapping::open`] installs it, remembering the
/// handler that was there before (std's stack-overflow reporter, or an application's own). A
/// fault outside every registered range is passed on to that handler; where there was none, the
/// default action ends the process, as it would have without us.
mod sigbus {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Once, OnceLock};

    const SLOTS: usize = 1024;

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: AtomicUsize = AtomicUsize::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const CLEAN: AtomicBool = AtomicBool::new(false);
    /// Start and end of each registered range; start 0 = free slot.
    static STARTS: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
    static ENDS: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
    static PAGE_SIZES: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
    static POISONED: [AtomicBool; SLOTS] = [CLEAN; SLOTS];
    static INSTALL: Once = Once::new();
    /// The SIGBUS disposition before ours, for faults that are not ours.
    static PREVIOUS: OnceLock<Previous> = OnceLock::new();

    /// A `sigaction` as read back from the kernel: plain data, never changed once stored.
    struct Previous(libc::sigaction);

    // SAFETY: `Previous` is written once before the handler is installed and only read after;
    // a `sigaction` is plain data (a handler address, a mask, flags).
    unsafe impl Sync for Previous {}
    // SAFETY: as above; nothing in it is tied to a thread.
    unsafe impl Send for Previous {}

    /// Registers `start..start + len`, mapped in pages of `page_size` bytes; `None` when the
    /// table is full or the range is empty.
    pub(super) fn register(start: usize, len: usize, page_size: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        INSTALL.call_once(install);
        for slot in 0..SLOTS {
            // claim the slot by its end first, so that the handler never sees a start without
            // its end
            if ENDS[slot].compare_exchange(0, start + len, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                POISONED[slot].store(false, Ordering::Release);
                PAGE_SIZES[slot].store(page_size.max(super::PAGE_SIZE), Ordering::Release);
                STARTS[slot].store(start, Ordering::Release);
                return Some(slot);
            }
        }
        None
    }

    pub(super) fn unregister(slot: usize) {
        STARTS[slot].store(0, Ordering::Release);
        ENDS[slot].store(0, Ordering::Release);
    }

    #[inline]
    pub(super) fn poisoned(slot: usize) -> bool {
        POISONED[slot].load(Ordering::Acquire)
    }

    fn install() {
        // SAFETY: a zeroed `sigaction` is a valid value (empty mask, no flags, SIG_DFL) that
        // the kernel overwrites with the current disposition (a null new action only reads).
        let previous = unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous);
            previous
        };
        let _ = PREVIOUS.set(Previous(previous));
        // SAFETY: as above for the zeroed value, which we then fill in; `handler` has the
        // signature SA_SIGINFO requires and only does async-signal-safe work (atomics, mmap,
        // sigaction, calling the previous handler).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                log::error!("cannot install the SIGBUS guard: {}", std::io::Error::last_os_error());
            }
        }
    }

    extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGBUS
        // `si_addr` is the faulting address.
        let address = unsafe { (*info).si_addr() } as usize;
        for slot in 0..SLOTS {
            let start = STARTS[slot].load(Ordering::Acquire);
            let end = ENDS[slot].load(Ordering::Acquire);
            if start != 0 && address >= start && address < end {
                POISONED[slot].store(true, Ordering::Release);
                let page_size = PAGE_SIZES[slot].load(Ordering::Acquire);
                let page = address & !(page_size - 1);
                // SAFETY: `page` lies inside a live mapping of ours (registered until the
                // mapping is dropped), aligned to that mapping's page size (mappings start on
                // such a boundary), so MAP_FIXED replaces exactly the faulting page with a
                // private read-only zero page and the faulting load can complete. No Rust
                // reference depends on the page's contents.
                let mapped = unsafe {
                    libc::mmap(
                        page as *mut libc::c_void,
                        page_size,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if mapped != libc::MAP_FAILED {
                    return;
                }
                break;
            }
        }
        pass_on(signal, info, context);
    }

    /// A fault that is not ours (or whose page could not be replaced): what would have happened
    /// without us.
    fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        let previous = PREVIOUS.get().map(|previous| &previous.0);
        match previous {
            Some(previous)
                if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
            {
                if previous.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: with SA_SIGINFO the kernel took `sa_sigaction` as a three-argument
                    // handler when it was installed; we call it as the kernel would have.
                    let chained: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(previous.sa_sigaction) };
                    chained(signal, info, context);
                } else {
                    // SAFETY: without SA_SIGINFO `sa_sigaction` is a one-argument handler.
                    let chained: extern "C" fn(libc::c_int) =
                        unsafe { std::mem::transmute(previous.sa_sigaction) };
                    chained(signal);
                }
            }
            _ => {
                // SAFETY: restoring SIG_DFL is async-signal-safe; returning re-executes the
                // faulting access, which then ends the process with SIGBUS.
                unsafe {
                    libc::signal(libc::SIGBUS, libc::SIG_DFL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapped temporary file of `len` bytes of a pattern, and the file to change under it.
    fn mapped(len: usize) -> (tempfile::NamedTempFile, Mapping, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        file.flush().unwrap();
        let mapping = Mapping::open(file.path()).unwrap();
        (file, mapping, bytes)
    }

    fn write_at(file: &tempfile::NamedTempFile, offset: u64, bytes: &[u8]) {
        std::os::unix::fs::FileExt::write_all_at(file.as_file(), bytes, offset).unwrap();
    }

    #[test]
    fn copies_see_changes_made_through_the_file() {
        let (file, mapping, bytes) = mapped(3 * 4096);
        let mut copy = vec![0u8; bytes.len()];
        mapping.copy_to(0, &mut copy).unwrap();
        assert_eq!(copy, bytes);
        write_at(&file, 5000, b"changed");
        let mut part = [0u8; 7];
        mapping.copy_to(5000, &mut part).unwrap();
        assert_eq!(&part, b"changed");
    }

    #[test]
    fn ranges_past_the_end_are_refused_before_any_copy() {
        let (_file, mapping, _) = mapped(4096);
        let mut buffer = [0u8; 16];
        assert!(matches!(mapping.copy_to(4090, &mut buffer), Err(BridgeError::InvalidAddress { .. })));
        assert!(matches!(
            mapping.copy_to(usize::MAX - 4, &mut buffer),
            Err(BridgeError::InvalidAddress { .. })
        ));
        assert!(matches!(mapping.view(4096, 1), Err(BridgeError::InvalidAddress { .. })));
        assert!(mapping.view(4095, 1).is_ok());
    }

    /// Pages whose size is not a multiple of 8 start at unaligned addresses: a change in their
    /// first bytes must still be seen (it was not, before the head bytes were compared).
    #[test]
    fn changes_in_unaligned_pages_are_found_in_every_byte() {
        let (file, mapping, bytes) = mapped(1000);
        for page_size in [1, 3, 7, 13, 100, 1000] {
            for changed_byte in [0, 1, 5, 7, 8, 99, 500, 999] {
                let mut expected = bytes.clone();
                expected[changed_byte] ^= 0xff;
                let changed = mapping.changed_pages(&expected, page_size).unwrap();
                assert_eq!(
                    changed,
                    vec![changed_byte / page_size],
                    "page size {page_size}, byte {changed_byte}"
                );
            }
            assert_eq!(mapping.changed_pages(&bytes, page_size).unwrap(), Vec::<usize>::new());
        }
        // and a change made under the mapping is seen against an old copy
        write_at(&file, 333, &[bytes[333] ^ 1]);
        assert_eq!(mapping.changed_pages(&bytes, 10).unwrap(), vec![33]);
    }

    #[test]
    fn large_copies_and_scans_split_across_threads_agree_with_one_thread() {
        let len = PARALLEL_COPY_THRESHOLD + 3 * 4096 + 17;
        let (file, mapping, bytes) = mapped(len);
        let mut one = vec![0u8; len];
        let mut many = vec![0u8; len];
        mapping.copy_with_threads(0, &mut one, 1).unwrap();
        mapping.copy_with_threads(0, &mut many, 3).unwrap();
        assert!(one == bytes && many == bytes);
        write_at(&file, (len - 1) as u64, &[bytes[len - 1] ^ 1]);
        write_at(&file, 4096, &[bytes[4096] ^ 1]);
        assert_eq!(mapping.changed_pages(&bytes, 4096).unwrap(), vec![1, (len - 1) / 4096]);
    }

    #[test]
    fn write_to_puts_exactly_the_range_in_the_file() {
        let (_file, mapping, bytes) = mapped(10_000);
        let out = tempfile::tempfile().unwrap();
        mapping.write_to(&out, 123, 9000).unwrap();
        let mut written = Vec::new();
        std::io::Seek::rewind(&mut &out).unwrap();
        std::io::Read::read_to_end(&mut &out, &mut written).unwrap();
        assert_eq!(written, bytes[123..9123]);
    }

    #[test]
    fn a_shrunk_file_is_reported_not_read() {
        let (file, mapping, _) = mapped(3 * 4096);
        file.as_file().set_len(4096).unwrap();
        let mut buffer = [0u8; 8];
        assert!(matches!(
            mapping.copy_to(2 * 4096, &mut buffer),
            Err(BridgeError::FileShrunk { current: 4096, .. })
        ));
        mapping.copy_to(0, &mut buffer).unwrap();
    }

    #[test]
    fn open_errors_name_the_file() {
        match Mapping::open(Path::new("/nonexistent/qemu-bridge-ram")) {
            Err(BridgeError::FileNotFound(path)) => assert_eq!(path, "/nonexistent/qemu-bridge-ram"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Mapping::open(dir.path()), Err(BridgeError::NotAFile(_))));
    }

    /// Set by the handler the chain test installs before ours.
    static EARLIER_HANDLER_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn earlier_handler(_signal: libc::c_int) {
        EARLIER_HANDLER_RAN.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run in a child process by the test below (handlers are process-wide): an application's
    /// SIGBUS handler installed before the first mapping still gets the SIGBUS signals that are
    /// not ours. Before the guard chained, such a signal killed the process.
    #[test]
    #[ignore = "run in a child process by foreign_sigbus_goes_to_the_handler_installed_before"]
    fn sigbus_chain_child() {
        if std::env::var_os("QEMU_BRIDGE_SIGBUS_CHILD").is_none() {
            return;
        }
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); `earlier_handler` is a
        // one-argument handler that only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = earlier_handler as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()), 0);
        }
        let (_file, _mapping, _) = mapped(4096);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGBUS).unwrap();
        assert!(EARLIER_HANDLER_RAN.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn foreign_sigbus_goes_to_the_handler_installed_before() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ram::mapping::tests::sigbus_chain_child",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env("QEMU_BRIDGE_SIGBUS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{:?}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    /// An 8 MiB file in /dev/shm (tmpfs) with data in three pages only, and its allocated bytes.
    fn sparse_shm_file() -> (tempfile::NamedTempFile, Mapping, Vec<u8>) {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        let mut expected = vec![0u8; 8 << 20];
        file.as_file().set_len(expected.len() as u64).unwrap();
        for (offset, byte) in [(0usize, 1u8), (3 << 20, 2), ((8 << 20) - 1, 3)] {
            write_at(&file, offset as u64, &[byte]);
            expected[offset] = byte;
        }
        let mapping = Mapping::open(file.path()).unwrap();
        (file, mapping, expected)
    }

    fn allocated(file: &tempfile::NamedTempFile) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.as_file().metadata().unwrap().blocks() * 512
    }

    /// Reading never allocates the guest's untouched pages: every way of reading a mostly empty
    /// tmpfs RAM file returns its bytes and leaves its allocated size as it was.
    #[test]
    fn reading_a_sparse_ram_file_allocates_nothing() {
        let (file, mapping, expected) = sparse_shm_file();
        let before = allocated(&file);
        assert!(before <= 3 * 4096, "{before}");
        assert_eq!(mapping.read_method(), ReadMethod::MappingWithHoles);
        assert_eq!(mapping.data_bytes().unwrap(), 3 * 4096);
        let mut copy = vec![0xaau8; expected.len()];
        mapping.copy_with_threads(0, &mut copy, 1).unwrap();
        assert!(copy == expected);
        copy.fill(0xaa);
        mapping.copy_with_threads(0, &mut copy, 3).unwrap();
        assert!(copy == expected);
        assert_eq!(mapping.changed_pages(&expected, 4096).unwrap(), Vec::<usize>::new());
        let mut wrong = expected.clone();
        wrong[5 << 20] = 9;
        assert_eq!(mapping.changed_pages(&wrong, 4096).unwrap(), vec![(5 << 20) / 4096], "a hole is zeros");
        for (offset, len) in
            [(0, 1 << 20), (1 << 20, 1 << 20), ((3 << 20) - 10, 20), ((8 << 20) - 4096, 4096)]
        {
            assert_eq!(*mapping.read_for_reply(offset, len).unwrap(), expected[offset..offset + len]);
        }
        let out = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        mapping.write_to(out.as_file(), 0, expected.len()).unwrap();
        assert_eq!(std::fs::read(out.path()).unwrap(), expected);
        assert!(allocated(&out) <= 3 * 4096, "the snapshot is sparse: {}", allocated(&out));
        assert_eq!(allocated(&file), before, "reading allocated guest pages");
    }

    #[test]
    fn known_data_covers_exactly_the_marked_pages() {
        let known = KnownData::new(300 * 4096);
        known.mark(4096 * 3 + 5, 4096 * 130);
        assert!(known.covers(4096 * 3, 1));
        assert!(known.covers(4096 * 3, 127 * 4096));
        assert!(!known.covers(4096 * 3, 127 * 4096 + 1), "page 130 was not marked");
        assert!(!known.covers(4096 * 2 + 4095, 2), "page 2 was not marked");
        assert!(known.covers(4096 * 63, 4096 * 2), "across a word boundary");
        assert!(!KnownData::default().covers(0, 1));
    }

    /// Small reads of pages seen as data skip the system calls; a hole read before is looked
    /// at again (the guest may have written it since), and neither read allocates a hole.
    #[test]
    fn small_reads_see_pages_the_guest_touches_later_and_allocate_nothing() {
        let (file, mapping, _) = sparse_shm_file();
        let before = allocated(&file);
        let mut word = [0xaau8; 8];
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0; 8], "a hole reads zeros");
        assert_eq!(allocated(&file), before, "reading a hole allocated it");
        write_at(&file, (5 << 20) + 3, &[7]);
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0, 0, 0, 7, 0, 0, 0, 0], "a page written after it read as a hole");
        write_at(&file, (5 << 20) + 4, &[8]);
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0, 0, 0, 7, 8, 0, 0, 0], "a known page is read live");
    }

    /// Without a size check before each copy, a known page lost to a truncation is still
    /// reported (the SIGBUS guard), and so is a range past the new end that was never read.
    #[test]
    fn a_truncated_known_page_is_reported_not_read() {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        write_at(&file, 0, &[1u8; 3 * 4096]);
        let mapping = Mapping::open(file.path()).unwrap();
        let mut word = [0u8; 8];
        mapping.copy_to(2 * 4096, &mut word).unwrap();
        assert_eq!(word, [1; 8]);
        file.as_file().set_len(4096).unwrap();
        assert!(matches!(mapping.copy_to(2 * 4096, &mut word), Err(BridgeError::FileShrunk { .. })));
        assert!(matches!(mapping.copy_to(4096, &mut word), Err(BridgeError::FileShrunk { .. })));
    }

    #[test]
    fn tmpfs_pages_are_the_system_page_size() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(page_size_of(&file).unwrap(), (4096, false));
    }
}
